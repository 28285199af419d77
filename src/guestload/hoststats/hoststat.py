"""What a host stat is: a group of libvirt's bulk domain stats, parsed and exported per VM.

A host stat names one stats group of ``virConnectGetAllDomainStats`` (by the name of its libvirt
constant, e.g. ``VIR_DOMAIN_STATS_BALLOON``: only :mod:`guestload.sources.libvirt` imports
libvirt and resolves it), parses one domain's bulk-stats record into a value of its own, and
turns that value into samples of its own metric families. The libvirt source asks for every
enabled host stat's group in its one bulk call per poll and keeps each parsed value in the
domain's inventory; the exposition writes their samples. Adding one adds a module of
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

from guestload.metricspec import MetricSpec, VmSample

log = logging.getLogger(__name__)

STATS_GROUP_PREFIX = "VIR_DOMAIN_STATS_"
"""Every stats group constant's prefix (``virDomainStatsTypes``)."""


class HostStat(abc.ABC):
    """One group of libvirt's bulk domain stats. Instances are immutable and shared."""

    name: str
    """Its registered name, and its key in a domain's ``host_stats``."""
    stats_group: str
    """The name of the libvirt constant of its stats group, e.g. ``VIR_DOMAIN_STATS_BALLOON``."""

    @property
    @abc.abstractmethod
    def families(self) -> tuple[MetricSpec, ...]:
        """The per-VM families this host stat feeds, in exposition order."""

    @abc.abstractmethod
    def parse(self, record: Mapping[str, object]) -> object | None:
        """The value of one domain's bulk-stats record; None where the record lacks the group.

        Pure, and never raises: the record is untrusted (part of it comes from the guest), and
        a field that is not what libvirt documents is left out of the value.
        """

    @abc.abstractmethod
    def samples(self, value: object) -> Iterator[VmSample]:
        """The samples of a parsed value: family, label values after the VM's, value."""


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
