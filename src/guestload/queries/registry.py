"""Registering guest-agent queries: each query module describes itself, a registry keeps them.

A query module ends with its :class:`QueryRegistration`, made by :func:`registration` (as a
node_exporter collector calls ``registerCollector(name, defaultEnabled, factory)`` from its own
file): the query's name; its ``--collector.*`` flags, each bound to a field of the query's own
frozen options dataclass, whose defaults are the flags' defaults and whose first flag switches
the query on and off (field ``enabled``); a factory building the configured
:class:`~guestload.queries.query.GuestQuery` from those options; every metric family it may
export; the QEMU version whose agent first has its command; and what a healthy agent answers,
made from a read-only :class:`SimulatedGuest`.

A :class:`QueryRegistry` holds the registrations in exposition order. Like client_python's
``CollectorRegistry.register`` it refuses, when a query is registered, what would break the
command line or the exposition: a second query of the same name, a flag another query already
has, and a metric name another query exports or the exporter exports itself
(:data:`~guestload.exposition.schema.FIXED_FAMILIES`). A family and its alternative in the same
query (cpustats' summed and per-CPU families) may share a name: a configuration exports only
one of them.

From the registry the CLI adds each query's flags, :class:`~guestload.settings.Settings` keeps
each query's options (a :class:`QuerySelection`) and builds the enabled queries, and the
simulated source answers for each query. :mod:`guestload.queries.catalog` lists the
registrations guestload has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar, get_type_hints

from guestload.exposition.schema import FIXED_FAMILIES, VM_LABELS, MetricSpec
from guestload.queries.query import GuestQuery

FLAG_PREFIX = "--collector."
"""Every query flag's prefix, as node_exporter's collector flags have."""
SWITCH_OPTION = "enabled"
"""The options field a query's first flag sets: whether the query is asked at all."""


class RegistrationError(ValueError):
    """A query registration that would clash with the registry or is malformed."""


class QueryOptions(Protocol):
    """A query's options: a frozen dataclass with at least the :data:`SWITCH_OPTION` field."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[object]]]

    @property
    def enabled(self) -> bool: ...


OptionsT = TypeVar("OptionsT", bound=QueryOptions)


@dataclass(frozen=True, slots=True)
class QueryFlag:
    """One ``--collector.*`` flag of a query, bound to a field of the query's options."""

    name: str
    """The flag, e.g. ``--collector.guest-cpu.per-cpu``; an on/off flag also has ``--no-``."""
    option: str
    """The options field it sets; its type makes the flag's type, its default the default."""
    help: str
    """The help text; ``%(default)s`` shows the default as users type it."""

    @property
    def off_name(self) -> str:
        """The ``--no-`` form of an on/off flag that is on by default."""
        return f"--no-{self.name.removeprefix('--')}"


@dataclass(frozen=True, slots=True)
class SimulatedGuest:
    """A read-only view of one simulated VM, from which a query makes a healthy agent's answer."""

    loads: tuple[float, float, float]
    """The guest kernel's 1, 5 and 15 minute load averages."""
    busy_seconds: float
    """CPU time the guest has used since boot, summed over its vCPUs' weights."""
    uptime_seconds: float
    vcpu_weights: tuple[float, ...]
    """Each vCPU's share of the busy time (near 1)."""
    wait_share: float
    """The share of uptime each vCPU waits for I/O."""
    delay_share: float
    """The share of busy time each vCPU waits for a host CPU."""


@dataclass(frozen=True, slots=True, eq=False)
class QueryRegistration:
    """Everything guestload needs to know of one query; made by :func:`registration`."""

    name: str
    """The query's ``query`` label value; the factory's queries have it."""
    flags: tuple[QueryFlag, ...]
    """The query's flags in ``--help`` order; the first sets :data:`SWITCH_OPTION`."""
    defaults: QueryOptions
    """The options when no flag is given."""
    families: tuple[MetricSpec, ...]
    """Every family the query may export, alternatives included."""
    agent_since: tuple[int, int]
    """The QEMU version (major, minor) whose guest agent first has the query's command."""
    simulated_answer: Callable[[SimulatedGuest], object]
    """A healthy agent's answer: libvirt's guest-info mapping where the query has
    :attr:`~guestload.queries.query.GuestQuery.guest_info`, else the raw passthrough reply."""
    _build: Callable[[QueryOptions], GuestQuery]

    @property
    def switch(self) -> QueryFlag:
        """The flag that turns the query on and off."""
        return self.flags[0]

    def build(self, options: QueryOptions) -> GuestQuery:
        """The query ``options`` configure, whether enabled or not."""
        query = self._build(options)
        if query.name != self.name:
            raise RegistrationError(f"query {self.name!r}: the factory built query {query.name!r}")
        undeclared = [spec.name for spec in query.families if spec not in self.families]
        if undeclared:
            raise RegistrationError(
                f"query {self.name!r} exports unregistered families: {', '.join(undeclared)}"
            )
        return query

    def option_type(self, option: str) -> object:
        """The declared type of field ``option`` of the query's options."""
        return get_type_hints(type(self.defaults))[option]

    def default(self, option: str) -> object:
        """The default of field ``option`` of the query's options."""
        return getattr(self.defaults, option)

    def options(self, values: Mapping[str, object]) -> QueryOptions:
        """The defaults with the fields in ``values`` replaced (e.g. the flags given)."""
        unknown = ", ".join(sorted(set(values) - {spec.option for spec in self.flags}))
        if unknown:
            raise RegistrationError(f"query {self.name!r} has no flag for option {unknown}")
        return dataclasses.replace(self.defaults, **values)


def registration(
    *,
    name: str,
    defaults: OptionsT,
    flags: Sequence[QueryFlag],
    build: Callable[[OptionsT], GuestQuery],
    families: Sequence[MetricSpec],
    agent_since: tuple[int, int],
    simulated_answer: Callable[[SimulatedGuest], object],
) -> QueryRegistration:
    """A query's registration, checked on its own (the registry checks it against the others).

    ``defaults`` is an instance of the query's frozen options dataclass; ``build`` gets only
    instances of that class.
    """
    kind = type(defaults)

    def build_checked(options: QueryOptions) -> GuestQuery:
        if not isinstance(options, kind):
            raise RegistrationError(
                f"query {name!r}: options are a {type(options).__name__}, not {kind.__name__}"
            )
        return build(options)

    fields = {spec.name for spec in dataclasses.fields(defaults)}
    params = getattr(kind, "__dataclass_params__", None)
    problems = [
        (not name, "has no name"),
        (params is None or not params.frozen, "options are not a frozen dataclass"),
        (SWITCH_OPTION not in fields, f"options have no {SWITCH_OPTION!r} field"),
        (not flags or flags[0].option != SWITCH_OPTION, f"first flag does not set {SWITCH_OPTION}"),
        (not families, "exports no family"),
    ]
    for flag in flags:
        problems += [
            (not flag.name.startswith(FLAG_PREFIX), f"flag {flag.name} lacks {FLAG_PREFIX}"),
            (flag.option not in fields, f"flag {flag.name} sets no options field {flag.option}"),
        ]
    for spec in families:
        problems.append(
            (
                spec.labels[: len(VM_LABELS)] != VM_LABELS,
                f"family {spec.name} is not per VM (its labels start with {', '.join(VM_LABELS)})",
            )
        )
    for bad, what in problems:
        if bad:
            raise RegistrationError(f"query {name!r}: {what}")
    return QueryRegistration(
        name=name,
        flags=tuple(flags),
        defaults=defaults,
        families=tuple(families),
        agent_since=agent_since,
        simulated_answer=simulated_answer,
        _build=build_checked,
    )


@dataclass(frozen=True, slots=True)
class QuerySelection:
    """Each registered query's options, in exposition order: what a configuration asks."""

    choices: tuple[tuple[QueryRegistration, QueryOptions], ...]

    def queries(self) -> tuple[GuestQuery, ...]:
        """The enabled queries, in the order each domain is asked them (exposition order)."""
        return tuple(reg.build(options) for reg, options in self.choices if options.enabled)

    def of(self, kind: type[OptionsT]) -> OptionsT:
        """The options of the query whose options class is ``kind``."""
        for _, options in self.choices:
            if isinstance(options, kind):
                return options
        raise KeyError(f"no registered query has options of type {kind.__name__}")

    def replaced(self, *options: QueryOptions) -> QuerySelection:
        """These options instead of the ones of the same class."""
        changed = {type(option): option for option in options}
        if missing := set(changed) - {type(chosen) for _, chosen in self.choices}:
            names = ", ".join(sorted(kind.__name__ for kind in missing))
            raise KeyError(f"no registered query has options of type {names}")
        return QuerySelection(
            tuple((reg, changed.get(type(chosen), chosen)) for reg, chosen in self.choices)
        )

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


class QueryRegistry:
    """Query registrations in exposition order; refuses clashes (see the module)."""

    def __init__(
        self,
        registrations: Iterable[QueryRegistration] = (),
        *,
        reserved: Iterable[MetricSpec] = FIXED_FAMILIES,
    ) -> None:
        self._registrations: dict[str, QueryRegistration] = {}
        self._flags: dict[str, str] = {}
        """Flag -> the query that has it. All start with :data:`FLAG_PREFIX`, so no flag can
        be another's ``--no-`` form."""
        self._names: dict[str, tuple[str | None, MetricSpec]] = {}
        """Metric name (family and sample name) -> the query exporting it (None: the exporter)."""
        for spec in reserved:
            self._claim_names(spec, None)
        for reg in registrations:
            self.register(reg)

    def register(self, registration: QueryRegistration) -> None:
        """Add ``registration`` after the others; raises :class:`RegistrationError` on a clash."""
        name = registration.name
        if name in self._registrations:
            raise RegistrationError(f"query {name!r} is already registered")
        for flag in registration.flags:
            owner = self._flags.get(flag.name)
            if owner is not None:
                raise RegistrationError(
                    f"query {name!r}: flag {flag.name} is already registered by query {owner!r}"
                )
        for spec in registration.families:
            for metric in _names(spec):
                claimed = self._names.get(metric)
                if claimed is None:
                    continue
                owner_name, other = claimed
                owner = "the exporter" if owner_name is None else f"query {owner_name!r}"
                raise RegistrationError(
                    f"query {name!r}: metric family {spec.name} clashes with family "
                    f"{other.name} of {owner} (both expose {metric})"
                )
        # Checked in full before anything is kept: a refused registration leaves no trace.
        self._registrations[name] = registration
        self._flags.update(dict.fromkeys((flag.name for flag in registration.flags), name))
        for spec in registration.families:
            self._claim_names(spec, name)

    def _claim_names(self, spec: MetricSpec, owner: str | None) -> None:
        for metric in _names(spec):
            self._names.setdefault(metric, (owner, spec))

    def __iter__(self) -> Iterator[QueryRegistration]:
        return iter(self._registrations.values())

    def __len__(self) -> int:
        return len(self._registrations)

    def get(self, name: str) -> QueryRegistration | None:
        """The registration of query ``name``, if registered."""
        return self._registrations.get(name)

    def defaults(self) -> QuerySelection:
        """Every query with its default options: the configuration without query flags."""
        return QuerySelection(tuple((reg, reg.defaults) for reg in self))

    def selection(self, values: Mapping[str, Mapping[str, object]]) -> QuerySelection:
        """Every query's options: its defaults, with ``values`` (query -> option -> value)."""
        unknown = set(values) - set(self._registrations)
        if unknown:
            raise RegistrationError(f"no query {', '.join(sorted(unknown))} is registered")
        return QuerySelection(tuple((reg, reg.options(values.get(reg.name, {}))) for reg in self))

    def reference_queries(self) -> tuple[GuestQuery, ...]:
        """Every query with its default options, enabled or not: the metrics reference's."""
        return tuple(reg.build(reg.defaults) for reg in self)


def _names(spec: MetricSpec) -> tuple[str, ...]:
    """The names a family takes in an exposition: its own and its samples'."""
    return tuple(dict.fromkeys((spec.name, spec.sample_name)))
