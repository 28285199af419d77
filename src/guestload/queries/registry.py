"""Registering guest-agent queries: each query module describes itself, a registry keeps them.

A query module ends with its :class:`QueryRegistration`, made by :func:`registration`: what every
collector registers (:mod:`guestload.registration`: the name, its ``--collector.*`` flags bound
to the query's own frozen options dataclass, every metric family it may export), and a factory
building the configured :class:`~guestload.queries.query.GuestQuery` from those options; the
QEMU version whose agent first has its command; and what a healthy agent answers, made from a
read-only :class:`~guestload.registration.SimulatedGuest`.

A :class:`QueryRegistry` holds the registrations in exposition order. It refuses a second query
of the same name; its :class:`~guestload.registration.Claims` refuse a flag another collector
already has and a metric name another collector (query or host stat) or the exporter itself
exports. A family and its alternative in the same query (cpustats' summed and per-CPU families)
may share a name: a configuration exports only one of them.

From the registry the CLI adds each query's flags, :class:`~guestload.settings.Settings` keeps
each query's options (a :class:`QuerySelection`) and builds the enabled queries, and the
simulated source answers for each query. :mod:`guestload.queries.catalog` lists the
registrations guestload has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from guestload.metricspec import MetricSpec
from guestload.queries.query import GuestQuery
from guestload.registration import (
    FLAG_PREFIX,
    CollectorFlag,
    CollectorOptions,
    OptionsT,
    Registration,
    RegistrationError,
    Registry,
    Selection,
    SimulatedGuest,
    check_registration,
)


@dataclass(frozen=True, slots=True, eq=False)
class QueryRegistration(Registration):
    """Everything guestload needs to know of one query; made by :func:`registration`.

    Its name is the query's ``query`` label value; the factory's queries have it.
    """

    kind: ClassVar[str] = "query"

    agent_since: tuple[int, int]
    """The QEMU version (major, minor) whose guest agent first has the query's command."""
    simulated_answer: Callable[[SimulatedGuest], object]
    """A healthy agent's answer: libvirt's guest-info mapping where the query has
    :attr:`~guestload.queries.query.GuestQuery.typed_info`, else the raw passthrough reply."""
    _build: Callable[[CollectorOptions], GuestQuery]

    def build(self, options: CollectorOptions) -> GuestQuery:
        """The query ``options`` configure, whether enabled or not."""
        self.check_options(options)
        query = self._build(options)
        if query.name != self.name:
            raise RegistrationError(f"{self.label}: the factory built query {query.name!r}")
        undeclared = [spec.name for spec in query.families if spec not in self.families]
        if undeclared:
            raise RegistrationError(
                f"{self.label} exports unregistered families: {', '.join(undeclared)}"
            )
        return query


def registration(
    *,
    name: str,
    defaults: OptionsT,
    flags: Sequence[CollectorFlag],
    build: Callable[[OptionsT], GuestQuery],
    families: Sequence[MetricSpec],
    agent_since: tuple[int, int],
    simulated_answer: Callable[[SimulatedGuest], object],
) -> QueryRegistration:
    """A query's registration, checked on its own (the registry checks it against the others).

    ``defaults`` is an instance of the query's frozen options dataclass; ``build`` gets only
    instances of that class.
    """
    check_registration(
        label=f"{QueryRegistration.kind} {name!r}",
        name=name,
        defaults=defaults,
        flags=flags,
        families=families,
    )
    return QueryRegistration(
        name=name,
        flags=tuple(flags),
        defaults=defaults,
        families=tuple(families),
        agent_since=agent_since,
        simulated_answer=simulated_answer,
        _build=build,  # type: ignore[arg-type]  # build() lets only the defaults' class in
    )


@dataclass(frozen=True, slots=True)
class QuerySelection(Selection[QueryRegistration]):
    """Each registered query's options, in exposition order: what a configuration asks."""

    kind: ClassVar[str] = "query"

    def queries(self) -> tuple[GuestQuery, ...]:
        """The enabled queries, in the order each domain is asked them (exposition order)."""
        return tuple(reg.build(options) for reg, options in self.enabled())

    def nothing_asked(self) -> tuple[str, str]:
        """The flag and the reason that name a configuration without any query enabled."""
        if not self.choices:
            return f"{FLAG_PREFIX}*", "no guest query is registered: no agent is asked anything"
        first, *others = (reg.switch for reg, _ in self.choices)
        off = first.off_name
        if not others:
            return off, "leaves no guest query: no guest agent is asked anything"
        needs = " or ".join(flag.name for flag in others)
        neither = "neither" if len(others) == 1 else "none of them"
        return off, f"needs {needs}: with {neither}, no guest agent is asked anything"


class QueryRegistry(Registry[QueryRegistration]):
    """Query registrations in exposition order; refuses clashes (see the module)."""

    kind: ClassVar[str] = "query"

    def defaults(self) -> QuerySelection:
        """Every query with its default options: the configuration without query flags."""
        return QuerySelection(self.choices())

    def selection(self, values: Mapping[str, Mapping[str, object]]) -> QuerySelection:
        """Every query's options: its defaults, with ``values`` (query -> option -> value)."""
        return QuerySelection(self.choices(values))

    def reference_queries(self) -> tuple[GuestQuery, ...]:
        """Every query with its default options, enabled or not: the metrics reference's."""
        return tuple(reg.build(reg.defaults) for reg in self)
