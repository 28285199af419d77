"""The snapshot's exposition in the Prometheus text format 0.0.4 and OpenMetrics 1.0.

Byte for byte what prometheus_client 0.26 writes for the families of
:mod:`guestload.exposition.schema` (the unit tests compare the two on generated snapshots), at a
fraction of the cost: prometheus_client validates and escapes every label name and value of
every sample; this writer escapes each VM's labels once, keeps the result between polls,
and formats only the values (docs/performance.md, "Rendering").

What both formats share: labels sorted by name; label values with ``\\``, ``"`` and newline
escaped; values as Go prints floats (``1.0``, ``1.7e+09``, ``+Inf``, ``NaN``); a counter's
samples named ``<name>_total``, without ``_created``. Only the HELP and TYPE lines differ: the
text format names a counter ``<name>_total`` there and escapes only ``\\`` and newline in
HELP; OpenMetrics uses the bare name, escapes ``"`` too, and ends with ``# EOF``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from guestload.exposition.schema import MetricSet, vm_label_values
from guestload.metricspec import VM_LABELS, MetricSpec
from guestload.model import Identity, Snapshot

_SPECIAL_FLOATS = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}
_LEGACY_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_GO_INTEGER_DIGITS = 6
"""Go prints a float with more integer digits than this in exponent form (Python: up to 16)."""
_GO_EXPONENT_FROM = 1e6
_MINUS_INF = float("-inf")


def format_value(value: float) -> str:
    """A sample value as Go (and so prometheus_client) prints it: ``1.0``, ``1.7e+09``."""
    number = value if type(value) is float else float(value)
    if number < _GO_EXPONENT_FROM and number != _MINUS_INF:  # most values: as Python prints them
        return repr(number)
    text = repr(number)
    dot = text.find(".")
    if dot > _GO_INTEGER_DIGITS:  # e.g. 1700000000.0, whose exponent Go writes
        mantissa = (text[0] + "." + text[1:dot] + text[dot + 1 :]).rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    if dot < 0 and text[-1] in "fn":  # inf, -inf, nan
        return _SPECIAL_FLOATS[text]
    return text


def escape_label_value(value: str) -> str:
    """A label value between double quotes: backslash, double quote and newline escaped."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _label_name(name: str) -> str:
    """A label name as prometheus_client writes it: characters outside ``[a-zA-Z0-9_]`` as _."""
    if not name or (_LEGACY_LABEL_NAME.match(name) and not name.startswith("__")):
        return name
    return "".join(
        char if char in _NAME_CHARS and (i > 0 or not char.isdigit()) else "_"
        for i, char in enumerate(name)
    )


def _labels_text(labels: Mapping[str, str]) -> str:
    pairs = sorted(labels.items())
    return ",".join(f'{_label_name(name)}="{escape_label_value(value)}"' for name, value in pairs)


def header_lines(spec: MetricSpec) -> tuple[str, str]:
    """The HELP and TYPE lines of ``spec``: text format, OpenMetrics."""
    name = spec.sample_name
    text_help = spec.help.replace("\\", "\\\\").replace("\n", "\\n")
    om_help = text_help.replace('"', '\\"')
    return (
        f"# HELP {name} {text_help}\n# TYPE {name} {spec.type}\n",
        f"# HELP {spec.name} {om_help}\n# TYPE {spec.name} {spec.type}\n",
    )


class _VmLayout:
    """Where a per-VM family's extra labels go around the VM's own, in sorted label order."""

    __slots__ = ("after", "before", "spec")

    def __init__(self, spec: MetricSpec) -> None:
        if spec.labels[: len(VM_LABELS)] != VM_LABELS:
            raise ValueError(f"{spec.name}: a per-VM family's labels start with {VM_LABELS}")
        extra = spec.labels[len(VM_LABELS) :]
        ordered = sorted(spec.labels)
        first = min(ordered.index(label) for label in VM_LABELS)
        if sorted(ordered[first : first + len(VM_LABELS)]) != sorted(VM_LABELS):
            raise ValueError(f"{spec.name}: extra labels must sort before or after {VM_LABELS}")
        self.spec = spec
        self.before = tuple(i for i, label in enumerate(extra) if ordered.index(label) < first)
        """Positions (in the spec's order) of extra labels written before the VM's."""
        self.after = tuple(i for i, label in enumerate(extra) if ordered.index(label) > first)

    def fragments(self, extra: tuple[str, ...]) -> tuple[str, str]:
        """The text before and after the VM's labels for these extra label values."""
        names = self.spec.labels[len(VM_LABELS) :]
        before = sorted((names[i], extra[i]) for i in self.before)
        after = sorted((names[i], extra[i]) for i in self.after)
        return (
            "".join(f'{name}="{escape_label_value(value)}",' for name, value in before),
            "".join(f',{name}="{escape_label_value(value)}"' for name, value in after),
        )


def vm_labels_text(identity: Identity) -> str:
    """A VM's own labels, sorted and escaped: ``name="..",namespace="..",node=".."``."""
    pairs = sorted(zip(VM_LABELS, vm_label_values(identity), strict=True))
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)


class RenderedSnapshot:
    """One snapshot's sample lines, ready to be joined into either format."""

    __slots__ = ("_blocks",)

    def __init__(self, blocks: list[tuple[tuple[str, str], str]]) -> None:
        self._blocks = blocks

    def body(self, *, openmetrics_format: bool) -> bytes:
        """The exposition; for OpenMetrics without its final ``# EOF`` line (a tail may follow)."""
        index = 1 if openmetrics_format else 0
        parts: list[str] = []
        for headers, samples in self._blocks:
            parts.append(headers[index])
            parts.append(samples)
        return "".join(parts).encode()


_Around = dict[tuple[MetricSpec, tuple[str, ...]], tuple[str, str]]
"""A per-VM family and extra label values -> the line's text before and after the VM's labels:
``name{extra="..",`` and ``,extra=".."} ``."""


class SnapshotWriter:
    """Writes snapshots' expositions, keeping each VM's label text from one render to the next.

    Label texts of VMs (and vCPU ids, states, domain names) not in a snapshot are dropped with
    it. Safe to use from several threads: a render reads the texts of the previous one and
    replaces them with its own when done.
    """

    def __init__(self, *, metric_set: MetricSet) -> None:
        self._metric_set = metric_set
        self._layouts = {spec: _VmLayout(spec) for spec in metric_set.vm_families()}
        self._headers = {spec: header_lines(spec) for spec in metric_set.all_families()}
        self._names = {spec: spec.sample_name for spec in metric_set.all_families()}
        self._heads = {spec: f"{spec.sample_name}{{" for spec in self._layouts}
        """Each per-VM family's line start, up to its first label."""
        self._vm_text: dict[Identity, str] = {}
        self._around: _Around = {}
        self._exporter_text: dict[tuple[tuple[str, str], ...], str] = {}
        """The label text of each exporter sample's labels in the last render."""

    def _new_around(self, spec: MetricSpec, extra: tuple[str, ...]) -> tuple[str, str]:
        before, after = self._layouts[spec].fragments(extra)
        return f"{self._heads[spec]}{before}", f"{after}}} "

    def render(self, snapshot: Snapshot) -> RenderedSnapshot:
        """Format ``snapshot``'s samples; :meth:`RenderedSnapshot.body` joins them per format."""
        domain_samples = self._metric_set.domain_samples
        previous_vm = self._vm_text
        vm_text: dict[Identity, str] = {}
        previous_around = self._around
        around: _Around = {}
        heads = self._heads
        # Every family gets its block, empty where it has no sample (most VMs have no disk, say).
        lines: dict[MetricSpec, list[str]] = {spec: [] for spec in heads}
        for domain in snapshot.domains:
            identity = domain.identity
            vm = vm_text.get(identity)
            if vm is None:
                vm = previous_vm.get(identity) or vm_labels_text(identity)
                vm_text[identity] = vm
            for spec, extra, value in domain_samples(domain):
                if extra:
                    key = (spec, extra)
                    texts = around.get(key)
                    if texts is None:
                        texts = previous_around.get(key) or self._new_around(spec, extra)
                        around[key] = texts
                    lines[spec].append(f"{texts[0]}{vm}{texts[1]}{format_value(value)}\n")
                else:
                    lines[spec].append(f"{heads[spec]}{vm}}} {format_value(value)}\n")
        self._vm_text = vm_text
        self._around = around
        headers = self._headers
        blocks = [(headers[spec], "".join(family)) for spec, family in lines.items()]
        previous_text = self._exporter_text
        exporter_text: dict[tuple[tuple[str, str], ...], str] = {}
        for spec, samples in self._metric_set.exporter_families(snapshot):
            name = self._names[spec]
            sample_lines = []
            for labels, value in samples:
                pairs = tuple(labels.items())
                text = exporter_text.get(pairs)
                if text is None:
                    text = previous_text.get(pairs)
                    if text is None:
                        text = f"{{{_labels_text(labels)}}}" if labels else ""
                    exporter_text[pairs] = text
                sample_lines.append(f"{name}{text} {format_value(value)}\n")
            blocks.append((headers[spec], "".join(sample_lines)))
        self._exporter_text = exporter_text
        return RenderedSnapshot(blocks)
