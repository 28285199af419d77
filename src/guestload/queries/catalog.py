"""Every guest-agent query guestload has, and which of them a configuration asks."""

from __future__ import annotations

from guestload.queries.cpustats import CpuStatsQuery
from guestload.queries.load import LOAD
from guestload.queries.query import GuestQuery

ALL_QUERIES: tuple[GuestQuery, ...] = (LOAD, CpuStatsQuery())
"""Every query with its default options, in exposition order (the metrics reference)."""


def enabled_queries(
    *, guest_load: bool = True, guest_cpu: bool, guest_cpu_per_cpu: bool
) -> tuple[GuestQuery, ...]:
    """The queries a configuration asks each domain, in the order they are asked.

    The load comes first: it is the one most deployments need, so a slow second query can
    never delay it. Where KubeVirt's virt-handler already exports the load, only the CPU
    statistics are asked.
    """
    queries: list[GuestQuery] = [LOAD] if guest_load else []
    if guest_cpu:
        queries.append(CpuStatsQuery(per_cpu=guest_cpu_per_cpu))
    return tuple(queries)
