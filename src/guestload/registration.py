"""What every registered collector shares: flags bound to options, and the clash checks.

guestload has two kinds of collector, each registering itself from its own module as a
node_exporter collector calls ``registerCollector(name, defaultEnabled, factory)`` from its
own file: guest-agent queries (:mod:`guestload.queries.registry`) and host stats, groups of
libvirt's bulk domain stats (:mod:`guestload.hoststats.registry`). Both kinds have a name;
``--collector.*`` flags, each bound to a field of the collector's own frozen options dataclass,
whose defaults are the flags' defaults and whose first flag switches it on and off (field
``enabled``); and every metric family it may export. :class:`Registration` holds those, and
:func:`check_registration` checks them on their own.

A :class:`Claims` ledger keeps what the registered collectors claimed: their flags and their
metric names (family and sample names), with the exporter's own families
(:data:`~guestload.exposition.schema.FIXED_FAMILIES`) reserved from the start. Like
client_python's ``CollectorRegistry.register`` it refuses, at start-up rather than in a scrape,
a flag another collector has and a metric name another collector or the exporter exposes. The
query registry and the host-stat registry share one ledger (see their catalogs), so a metric
name is unique across both kinds. A family and its alternative in the same collector (one
configuration exports only one of them) may share a name.

:class:`SimulatedGuest` is the read-only view of one simulated VM from which each collector
makes what the simulated source answers for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Protocol, Self, TypeVar, get_type_hints

from guestload.exposition.schema import FIXED_FAMILIES
from guestload.metricspec import VM_LABELS, MetricSpec

FLAG_PREFIX = "--collector."
"""Every collector flag's prefix, as node_exporter's collector flags have."""
SWITCH_OPTION = "enabled"
"""The options field a collector's first flag sets: whether it runs at all."""


class RegistrationError(ValueError):
    """A registration that would clash with the ones before it, or is malformed."""


class CollectorOptions(Protocol):
    """A collector's options: a frozen dataclass with at least the :data:`SWITCH_OPTION` field."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[object]]]

    @property
    def enabled(self) -> bool: ...


OptionsT = TypeVar("OptionsT", bound=CollectorOptions)


@dataclass(frozen=True, slots=True)
class CollectorFlag:
    """One ``--collector.*`` flag, bound to a field of its collector's options."""

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
class SimulatedMemory:
    """A simulated VM's memory as its balloon driver would report it."""

    size_kib: int = 2 * 1024 * 1024
    """The memory the VM was given (the balloon is never inflated in the simulation)."""
    used_share: float = 0.4
    """The share of the memory the guest's processes use (neither free nor cache)."""
    thrashing: bool = False
    """The guest swaps continuously: its swap counters and major faults grow every step."""
    stats_period: bool = True
    """The VM's balloon has a statistics period: the guest reports more than the balloon size."""
    updated_at_seconds: float = 1_700_000_000.0
    """Unix time of the guest's last statistics update."""


@dataclass(frozen=True, slots=True)
class SimulatedOs:
    """A simulated VM's operating system, as its agent's ``guest-get-osinfo`` would report it:
    os-release's fields and the kernel's ``uname``; an empty field is one the agent leaves out.
    The defaults are a Debian 12 cloud guest."""

    id: str = "debian"
    name: str = "Debian GNU/Linux"
    pretty_name: str = "Debian GNU/Linux 12 (bookworm)"
    version: str = "12 (bookworm)"
    version_id: str = "12"
    variant: str = ""
    variant_id: str = ""
    kernel_release: str = "6.1.0-28-cloud-amd64"
    kernel_version: str = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)"
    machine: str = "x86_64"


@dataclass(frozen=True, slots=True)
class SimulatedGuest:
    """A read-only view of one simulated VM, from which a collector makes its simulated answer."""

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
    memory: SimulatedMemory = field(default_factory=SimulatedMemory)
    os: SimulatedOs = field(default_factory=SimulatedOs)


@dataclass(frozen=True, slots=True, eq=False)
class Registration:
    """What every kind of registration has: name, flags, default options, families."""

    kind: ClassVar[str] = "collector"
    """The kind's name in messages, e.g. ``query``."""

    name: str
    flags: tuple[CollectorFlag, ...]
    """The flags in ``--help`` order; the first sets :data:`SWITCH_OPTION`."""
    defaults: CollectorOptions
    """The options when no flag is given."""
    families: tuple[MetricSpec, ...]
    """Every family the collector may export, alternatives included."""

    @property
    def label(self) -> str:
        """The registration in messages, e.g. ``query 'load'``."""
        return f"{self.kind} {self.name!r}"

    @property
    def switch(self) -> CollectorFlag:
        """The flag that turns the collector on and off."""
        return self.flags[0]

    def option_type(self, option: str) -> object:
        """The declared type of field ``option`` of the options."""
        return get_type_hints(type(self.defaults))[option]

    def default(self, option: str) -> object:
        """The default of field ``option`` of the options."""
        return getattr(self.defaults, option)

    def options(self, values: Mapping[str, object]) -> CollectorOptions:
        """The defaults with the fields in ``values`` replaced (e.g. the flags given)."""
        unknown = ", ".join(sorted(set(values) - {spec.option for spec in self.flags}))
        if unknown:
            raise RegistrationError(f"{self.label} has no flag for option {unknown}")
        return dataclasses.replace(self.defaults, **values)

    def check_options(self, options: CollectorOptions) -> None:
        """Refuse options of another class than the defaults' (a factory gets only its own)."""
        kind = type(self.defaults)
        if not isinstance(options, kind):
            raise RegistrationError(
                f"{self.label}: options are a {type(options).__name__}, not {kind.__name__}"
            )


def check_registration(
    *,
    label: str,
    name: str,
    defaults: CollectorOptions,
    flags: Sequence[CollectorFlag],
    families: Sequence[MetricSpec],
) -> None:
    """Refuse a registration that is malformed on its own (``label`` names it in the message)."""
    fields = {spec.name for spec in dataclasses.fields(defaults)}
    params = getattr(type(defaults), "__dataclass_params__", None)
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
            raise RegistrationError(f"{label}: {what}")


class Claims:
    """The flags and metric names registered collectors hold; refuses a second claim."""

    def __init__(self, *, reserved: Iterable[MetricSpec] = FIXED_FAMILIES) -> None:
        self._flags: dict[str, str] = {}
        """Flag -> the label of the collector that has it. All start with :data:`FLAG_PREFIX`,
        so no flag can be another's ``--no-`` form."""
        self._names: dict[str, tuple[str, MetricSpec]] = {}
        """Metric name (family and sample name) -> the label of its owner, and its family."""
        for spec in reserved:
            self._claim_names(spec, "the exporter")

    def claim(self, registration: Registration) -> None:
        """Claim ``registration``'s flags and metric names, or raise :class:`RegistrationError`.

        Checked in full before anything is kept: a refused registration leaves no trace.
        """
        label = registration.label
        for flag in registration.flags:
            owner = self._flags.get(flag.name)
            if owner is not None:
                raise RegistrationError(
                    f"{label}: flag {flag.name} is already registered by {owner}"
                )
        for spec in registration.families:
            for metric in _names(spec):
                claimed = self._names.get(metric)
                if claimed is None:
                    continue
                owner, other = claimed
                raise RegistrationError(
                    f"{label}: metric family {spec.name} clashes with family "
                    f"{other.name} of {owner} (both expose {metric})"
                )
        self._flags.update(dict.fromkeys((flag.name for flag in registration.flags), label))
        for spec in registration.families:
            self._claim_names(spec, label)

    def _claim_names(self, spec: MetricSpec, owner: str) -> None:
        for metric in _names(spec):
            self._names.setdefault(metric, (owner, spec))


RegistrationT = TypeVar("RegistrationT", bound=Registration)


@dataclass(frozen=True, slots=True)
class Selection(Generic[RegistrationT]):
    """Each registered collector of one kind with its options, in exposition order."""

    kind: ClassVar[str] = "collector"

    choices: tuple[tuple[RegistrationT, CollectorOptions], ...]

    def enabled(self) -> Iterator[tuple[RegistrationT, CollectorOptions]]:
        """The registrations switched on, with their options."""
        return ((reg, options) for reg, options in self.choices if options.enabled)

    def of(self, kind: type[OptionsT]) -> OptionsT:
        """The options of the collector whose options class is ``kind``."""
        for _, options in self.choices:
            if isinstance(options, kind):
                return options
        raise KeyError(f"no registered {self.kind} has options of type {kind.__name__}")

    def replaced(self, *options: CollectorOptions) -> Self:
        """These options instead of the ones of the same class."""
        changed = {type(option): option for option in options}
        if missing := set(changed) - {type(chosen) for _, chosen in self.choices}:
            names = ", ".join(sorted(kind.__name__ for kind in missing))
            raise KeyError(f"no registered {self.kind} has options of type {names}")
        return type(self)(
            tuple((reg, changed.get(type(chosen), chosen)) for reg, chosen in self.choices)
        )


class Registry(Generic[RegistrationT]):
    """Registrations of one kind in exposition order.

    Refuses a second registration of the same name; its :class:`Claims`, which other
    registries may share (``claims``), refuse clashing flags and metric names.
    """

    kind: ClassVar[str] = "collector"

    def __init__(
        self, registrations: Iterable[RegistrationT] = (), *, claims: Claims | None = None
    ) -> None:
        self.claims = Claims() if claims is None else claims
        """What every registry sharing this ledger has claimed, the exporter's families too."""
        self._registrations: dict[str, RegistrationT] = {}
        for reg in registrations:
            self.register(reg)

    def register(self, registration: RegistrationT) -> None:
        """Add ``registration`` after the others; raises :class:`RegistrationError` on a clash."""
        if registration.name in self._registrations:
            raise RegistrationError(f"{registration.label} is already registered")
        self.claims.claim(registration)
        self._registrations[registration.name] = registration

    def __iter__(self) -> Iterator[RegistrationT]:
        return iter(self._registrations.values())

    def __len__(self) -> int:
        return len(self._registrations)

    def get(self, name: str) -> RegistrationT | None:
        """The registration named ``name``, if registered."""
        return self._registrations.get(name)

    def choices(
        self, values: Mapping[str, Mapping[str, object]] | None = None
    ) -> tuple[tuple[RegistrationT, CollectorOptions], ...]:
        """Every registration's options: its defaults, with ``values`` (name -> option -> value)."""
        given = values or {}
        unknown = set(given) - set(self._registrations)
        if unknown:
            raise RegistrationError(f"no {self.kind} {', '.join(sorted(unknown))} is registered")
        return tuple((reg, reg.options(given.get(reg.name, {}))) for reg in self)


def _names(spec: MetricSpec) -> tuple[str, ...]:
    """The names a family takes in an exposition: its own and its samples'."""
    return tuple(dict.fromkeys((spec.name, spec.sample_name)))
