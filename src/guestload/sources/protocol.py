"""What the poller needs from a hypervisor: the contract every source implements.

A source is a kind of hypervisor connection (libvirt at one URI, one libvirt daemon per
KubeVirt socket, simulated VMs; :mod:`guestload.sources.catalog` builds the one the settings
select). Everything particular to its kind stays behind this contract: what it knows about
itself reaches generic code as typed values (:class:`~guestload.model.SourceFacts`,
:class:`~guestload.model.ConnectionHealth`), and what to check when it cannot connect as text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from guestload.model import (
    ConnectionHealth,
    DomainEvent,
    DomainInventory,
    Identity,
    QueryReading,
    SourceFacts,
)
from guestload.queries.query import GuestQuery


class SourceUnavailableError(Exception):
    """The hypervisor cannot be reached; every domain's data is unknown until it can."""


EventListener = Callable[[DomainEvent], None]
Identify = Callable[[DomainInventory], Identity]
"""Names the VM of a domain (:meth:`guestload.identity.IdentityResolver.resolve`)."""


class Source(Protocol):
    """A hypervisor connection. Implementations are thread-safe for ``query_guest``."""

    def connect(self) -> None:
        """Open the connection; raise SourceUnavailableError when that fails."""

    def close(self) -> None:
        """Close the connection; safe to call when not connected."""

    def list_running_domains(self) -> Sequence[DomainInventory]:
        """One bulk call: every running domain with its vCPU stats.

        Raises SourceUnavailableError when the connection is lost.
        """

    def query_guest(
        self, uuid: str, queries: Sequence[GuestQuery], timeout_seconds: float
    ) -> Mapping[str, QueryReading]:
        """Ask one domain's guest agent ``queries``, in order: query name -> reading.

        Never raises: failures are classified. Each call to the agent may take up to
        ``timeout_seconds``; after a reading in an agent-wide state
        (:data:`~guestload.queries.query.AGENT_WIDE_STATES`) the remaining queries get the
        same state without a call.
        """

    def set_event_listener(self, listener: EventListener | None) -> None:
        """Deliver domain and agent lifecycle events to ``listener`` (from any thread)."""

    def facts(self) -> SourceFacts:
        """What the source reports about itself: versions, load method, URI. Read after each
        connection; fields the source cannot know yet are ``unknown``."""

    def connection_health(self, identify: Identify) -> tuple[ConnectionHealth, ...] | None:
        """Each of its hypervisor connections' health where the source keeps several, sorted
        by address; None where it keeps one (the poller knows whether that one is up).

        ``identify`` names the VM of the domain a connection listed last.
        """

    def unreachable_advice(self, error: str) -> str:
        """What a person should check when :meth:`connect` failed with ``error``: lines
        ending in a newline, or ``""`` when the source has nothing to add."""
