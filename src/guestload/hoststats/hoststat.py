"""What a host stat is: a group of libvirt's bulk domain stats, parsed and exported per VM.

A host stat names one stats group of ``virConnectGetAllDomainStats`` (by the name of its libvirt
constant, e.g. ``VIR_DOMAIN_STATS_BALLOON``: only :mod:`guestload.sources.libvirt` imports
libvirt and resolves it), parses one domain's bulk-stats record into a value of its own, and
turns that value into samples of its own metric families. The libvirt source asks for every
enabled host stat's group in its one bulk call per poll and keeps each parsed value in the
domain's inventory; the exposition writes their samples. A host stat that needs the domain's
configuration too (a disk's throttle caps) derives record keys from the domain's live XML, which
the source reads once per domain run and merges into every record it parses. Adding one adds a
module of
:mod:`guestload.hoststats`, whose registration (:mod:`guestload.hoststats.registry`) gives it
its flags, options and simulated record, and one entry in :mod:`guestload.hoststats.catalog`.

The vCPU statistics are older than host stats and stay as they are: the vCPU group is always
asked, :func:`guestload.sources.libvirt.parse_vcpu_stats` reads it, and ``--collector.vcpu``
only leaves its families out of the exposition.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from guestload.metricspec import MetricSpec, VmSample

log = logging.getLogger(__name__)

STATS_GROUP_PREFIX = "VIR_DOMAIN_STATS_"
"""Every stats group constant's prefix (``virDomainStatsTypes``)."""
DEFINITION_KEY_PREFIX = "guestload.definition."
"""The head of every record key derived from a domain's XML; libvirt's keys never have it."""


class HostStat(abc.ABC):
    """One group of libvirt's bulk domain stats. Instances are immutable and shared."""

    name: str
    """Its registered name, and its key in a domain's ``host_stats``."""
    stats_group: str
    """The name of the libvirt constant of its stats group, e.g. ``VIR_DOMAIN_STATS_BALLOON``."""

    reads_definition: bool = False
    """Whether :meth:`definition_keys` derives anything from the domain's XML."""

    @property
    @abc.abstractmethod
    def families(self) -> tuple[MetricSpec, ...]:
        """The per-VM families this host stat feeds, in exposition order."""

    def definition_keys(self, domain_xml: str) -> Mapping[str, object]:
        """Record keys derived from the domain's live XML (``virDomainGetXMLDesc``), each
        starting with :data:`DEFINITION_KEY_PREFIX`; merged into every record :meth:`parse`
        gets until the domain restarts or libvirt reports a tunable changed.

        Pure, and never raises; only host stats with :attr:`reads_definition` are asked.
        """
        del domain_xml
        return {}

    @abc.abstractmethod
    def parse(self, record: Mapping[str, object]) -> object | None:
        """The value of one domain's bulk-stats record; None where the record lacks the group.

        Pure, and never raises: the record is untrusted (part of it comes from the guest), and
        a field that is not what libvirt documents is left out of the value.
        """

    def fold(self, previous: object | None, value: object, elapsed_seconds: float) -> object:
        """The value to keep and export after ``value`` was read ``elapsed_seconds`` after
        ``previous``, the value kept from the domain run's last listing (None at its first).

        Stateless host stats export what they parse; counters use this for the rates of the
        last poll interval. Pure, and never raises.
        """
        del previous, elapsed_seconds
        return value

    @abc.abstractmethod
    def samples(self, value: object) -> Iterator[VmSample]:
        """The samples of a kept value: family, label values after the VM's, value."""


def bounded_integer(value: object, limit: int) -> int | None:
    """``value`` where it is an integer (not a bool) from 0 to ``limit``, else None."""
    if type(value) is int:  # nearly every value
        return value if 0 <= value <= limit else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        return None
    return value


def read_definition(host_stats: Sequence[HostStat], domain_xml: str) -> dict[str, object]:
    """The record keys each of ``host_stats`` that reads the definition derives from it.

    A deriver that raises despite its contract loses only its own keys for this domain.
    """
    keys: dict[str, object] = {}
    for host_stat in host_stats:
        if not host_stat.reads_definition:
            continue
        try:
            derived = host_stat.definition_keys(domain_xml)
        except Exception:
            log.debug(
                "host stat definition reader failed",
                extra={"host_stat": host_stat.name},
                exc_info=True,
            )
            continue
        keys.update(
            (key, value) for key, value in derived.items() if key.startswith(DEFINITION_KEY_PREFIX)
        )
    return keys


def read_record(host_stats: Sequence[HostStat], record: Mapping[str, object]) -> dict[str, object]:
    """Host stat name -> its value, for each of ``host_stats`` the record has a value of.

    A parser that raises despite its contract loses only its own value for this domain.
    """
    values: dict[str, object] = {}
    for host_stat in host_stats:
        try:
            value = host_stat.parse(record)
        except Exception:
            log.debug("host stat parser failed", extra={"host_stat": host_stat.name}, exc_info=True)
            continue
        if value is not None:
            values[host_stat.name] = value
    return values


@dataclass(frozen=True, slots=True)
class Kept:
    """A host stat's value as kept for a domain run, and the monotonic time it was read at."""

    value: object
    read_at: float


def fold_values(
    host_stats: Sequence[HostStat],
    values: Mapping[str, object],
    kept: Mapping[str, Kept],
    now: float,
) -> dict[str, Kept]:
    """Each of ``values`` folded with what was ``kept`` for it at the domain run's last listing.

    A host stat whose fold raises despite its contract keeps its unfolded value.
    """
    folded: dict[str, Kept] = {}
    for host_stat in host_stats:
        if host_stat.name not in values:
            continue
        value = values[host_stat.name]
        last = kept.get(host_stat.name)
        try:
            if last is None:
                value = host_stat.fold(None, value, 0.0)
            else:
                value = host_stat.fold(last.value, value, now - last.read_at)
        except Exception:
            log.debug("host stat fold failed", extra={"host_stat": host_stat.name}, exc_info=True)
        folded[host_stat.name] = Kept(value=value, read_at=now)
    return folded
