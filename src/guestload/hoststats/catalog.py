"""Every host stat guestload has: the registry of their registrations.

Each host-stat module describes itself in its ``REGISTRATION``
(:mod:`guestload.hoststats.registry`); this tuple is the one place that lists them, in
exposition order. The registry shares the query registry's claims: no flag or metric name of a
host stat may be a query's or the exporter's own.
"""

from __future__ import annotations

from guestload.hoststats import balloon, block
from guestload.hoststats.hoststat import HostStat
from guestload.hoststats.registry import HostStatRegistry
from guestload.queries.catalog import QUERIES

HOST_STATS = HostStatRegistry((balloon.REGISTRATION, block.REGISTRATION), claims=QUERIES.claims)
"""Every host stat guestload has, in exposition order."""

ALL_HOST_STATS: tuple[HostStat, ...] = HOST_STATS.reference_host_stats()
"""Every host stat with its default options, in exposition order (the metrics reference)."""
