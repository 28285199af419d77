"""How a metric family is described: its name, type, help and labels, and the shape of a sample.

Every part of guestload that names a family reads this module: the guest-agent queries
(:mod:`guestload.queries`) and the host stats (:mod:`guestload.hoststats`) for their own
families, the registration ledger (:mod:`guestload.registration`) to check them, and the
exposition (:mod:`guestload.exposition.schema`) for the exporter's own families and the metric
set. It imports nothing of guestload, so none of them depends on another for the description.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class MetricType(enum.StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"


@dataclass(frozen=True, slots=True, eq=False)
class MetricSpec:
    """One exported family. Compared by identity: each family is one module-level constant."""

    name: str
    """The family's name; a counter's samples and its text-format name add ``_total``."""
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    """Label names; a per-VM family's start with :data:`VM_LABELS`."""

    def __post_init__(self) -> None:
        if not _METRIC_NAME.fullmatch(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        if self.type is MetricType.COUNTER and self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r}: name it without _total")
        for label in self.labels:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"{self.name}: invalid label name {label!r}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"{self.name}: duplicate label names")

    @property
    def sample_name(self) -> str:
        """The name on each sample line (and in the text format's HELP and TYPE lines)."""
        return f"{self.name}_total" if self.type is MetricType.COUNTER else self.name


VM_LABELS = ("namespace", "name", "node")
"""The labels every per-VM family starts with, naming the VM."""

VmSample = tuple[MetricSpec, tuple[str, ...], float]
"""A per-VM family, the values of its labels after :data:`VM_LABELS`, and the value."""
