"""What a guest-agent query is: what to call, how to judge the answer, which series it feeds.

A query is one question to a guest's agent (its load average, its CPU times). It names the
agent command behind it and, where hypervisors have a typed API for the same answer, the kind
of typed answer; it parses the untrusted answer of either into a :class:`QueryReading`; and
it turns a reading's value into samples of its own metric families. The sources run queries,
the poller schedules them and keeps each one's state per domain, the exposition writes their
samples: adding a query adds one module here, whose registration
(:mod:`guestload.queries.registry`) gives it its flags, options and simulated answer, and one
entry in :mod:`guestload.queries.catalog`.

A query's :class:`Refresh` policy says how often the poller asks it. Values that change are
asked at every poll (:attr:`Refresh.EVERY_POLL`, the load). Values fixed while a guest runs are
asked once per agent run (:attr:`Refresh.ONCE_PER_RUN`, the guest's OS): an ``ok`` answer is
kept and exported without asking again until the domain restarts (a new domain id, a
started or stopped event) or its agent disconnects or connects; any other answer is asked
again at the next poll.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Iterator, Sequence

from guestload.metricspec import MetricSpec, VmSample
from guestload.model import AgentState, QueryReading

#: States that describe the agent or the domain rather than one query. After one query ends
#: in such a state, the domain's other queries are not asked in the same call: they would
#: only wait for the same timeout or get the same refusal.
AGENT_WIDE_STATES = frozenset(
    {
        AgentState.NOT_CONFIGURED,
        AgentState.NOT_CONNECTED,
        AgentState.TIMEOUT,
        AgentState.BUSY,
        AgentState.GONE,
    }
)


class Refresh(enum.StrEnum):
    """How often the poller asks a query of a domain (see the module)."""

    EVERY_POLL = "every_poll"
    """At every poll (a back-off aside): values that change, like the load."""
    ONCE_PER_RUN = "once_per_run"
    """Until an ``ok`` answer, then not again until the domain restarts or its agent
    disconnects or connects: values fixed while the guest runs, like its OS."""


class TypedInfo(enum.StrEnum):
    """A typed answer a hypervisor API gives to the same question as an agent command: a flat
    mapping whose keys start with the kind and a dot (``load.1m``, ``os.id``). A source that
    has the API for a kind asks it instead of the agent's raw command."""

    LOAD = "load"
    OS = "os"


class GuestQuery(abc.ABC):
    """One question to a guest agent. Instances are immutable and shared by every domain."""

    name: str
    """Its ``query`` label value, e.g. ``load``."""
    agent_command: str
    """The agent command (passthrough), e.g. ``guest-get-load``."""
    typed_info: TypedInfo | None = None
    """The typed answer to the same question, preferred where the source has it."""
    refresh: Refresh = Refresh.EVERY_POLL
    """How often the poller asks it."""

    @property
    @abc.abstractmethod
    def families(self) -> tuple[MetricSpec, ...]:
        """The per-VM families this query feeds, in exposition order."""

    def parse_typed_info(self, info: object) -> QueryReading:
        """Judge a typed answer. Only queries with :attr:`typed_info` get one."""
        raise NotImplementedError(f"query {self.name} has no typed answer")

    @abc.abstractmethod
    def parse_agent_reply(self, reply: object) -> QueryReading:
        """Judge the agent's raw passthrough reply. Never raises: bad input is ``invalid``."""

    def fold(self, previous: object | None, value: object) -> object:
        """The value to export after ``value`` was read, given the last one kept (or None).

        Stateless queries export what they read; counters use this to stay monotonic.
        """
        del previous
        return value

    @abc.abstractmethod
    def samples(self, value: object) -> Iterator[VmSample]:
        """The samples of a kept value: family, label values after the VM's, value."""


def run_queries(
    queries: Sequence[GuestQuery], ask: Callable[[GuestQuery], QueryReading]
) -> dict[str, QueryReading]:
    """Ask each query in turn with ``ask``: query name -> reading.

    After a reading in an agent-wide state, the remaining queries get that state without a
    call, so a hung agent costs one timeout per domain, not one per query.
    """
    readings: dict[str, QueryReading] = {}
    stopped: tuple[str, QueryReading] | None = None
    for query in queries:
        if stopped is None:
            reading = ask(query)
            if reading.state in AGENT_WIDE_STATES:
                stopped = (query.name, reading)
        else:
            first, failed = stopped
            reading = QueryReading(
                state=failed.state, detail=f"not asked: query {first} ended {failed.state}"
            )
        readings[query.name] = reading
    return readings
