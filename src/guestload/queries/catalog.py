"""Every guest-agent query guestload has: the registry of their registrations.

Each query module describes itself in its ``REGISTRATION`` (:mod:`guestload.queries.registry`);
this tuple is the one place that lists them, in exposition order. The load comes first: it is
the one most deployments need, so a slow second query can never delay it. Where KubeVirt's
virt-handler already exports the load, only the CPU statistics are asked. The guest's OS comes
last: it is asked once per agent run, after the values that change.
"""

from __future__ import annotations

from guestload.queries import cpustats, load, osinfo
from guestload.queries.query import GuestQuery
from guestload.queries.registry import QueryRegistry

QUERIES = QueryRegistry((load.REGISTRATION, cpustats.REGISTRATION, osinfo.REGISTRATION))
"""Every query guestload has, in the order each domain is asked them and they are exported."""

ALL_QUERIES: tuple[GuestQuery, ...] = QUERIES.reference_queries()
"""Every query with its default options, in exposition order (the metrics reference)."""
