"""Registering host stats: each host-stat module describes itself, a registry keeps them.

A host-stat module ends with its :class:`HostStatRegistration`, made by :func:`registration`:
what every collector registers (:mod:`guestload.registration`: the name, its ``--collector.*``
flags bound to the host stat's own frozen options dataclass, every metric family it may
export), a factory building the configured :class:`~guestload.hoststats.hoststat.HostStat` from
those options, and the bulk-stats record libvirt would give for a read-only
:class:`~guestload.registration.SimulatedGuest`, which the simulated source passes through the
host stat's own parser.

A :class:`HostStatRegistry` holds the registrations in exposition order and refuses a second
host stat of the same name. It shares its :class:`~guestload.registration.Claims` with the
query registry (:mod:`guestload.hoststats.catalog`), so a flag or a metric name of a host stat
cannot clash with a query's or the exporter's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from guestload.hoststats.hoststat import STATS_GROUP_PREFIX, HostStat
from guestload.metricspec import MetricSpec
from guestload.registration import (
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

SimulatedRecord = Callable[[SimulatedGuest], Mapping[str, object]]
"""The keys libvirt's bulk stats would report for a simulated VM, in the host stat's group."""


@dataclass(frozen=True, slots=True, eq=False)
class HostStatRegistration(Registration):
    """Everything guestload needs to know of one host stat; made by :func:`registration`."""

    kind: ClassVar[str] = "host stat"

    simulated_record: SimulatedRecord
    _build: Callable[[CollectorOptions], HostStat]

    def build(self, options: CollectorOptions) -> HostStat:
        """The host stat ``options`` configure, whether enabled or not."""
        self.check_options(options)
        host_stat = self._build(options)
        problems = [
            (host_stat.name != self.name, f"the factory built host stat {host_stat.name!r}"),
            (
                not host_stat.stats_group.startswith(STATS_GROUP_PREFIX),
                f"stats group {host_stat.stats_group!r} is not a {STATS_GROUP_PREFIX}* constant",
            ),
            (
                any(spec not in self.families for spec in host_stat.families),
                "exports unregistered families: "
                + ", ".join(spec.name for spec in host_stat.families if spec not in self.families),
            ),
        ]
        for bad, what in problems:
            if bad:
                raise RegistrationError(f"{self.label}: {what}")
        return host_stat


def registration(
    *,
    name: str,
    defaults: OptionsT,
    flags: Sequence[CollectorFlag],
    build: Callable[[OptionsT], HostStat],
    families: Sequence[MetricSpec],
    simulated_record: SimulatedRecord,
) -> HostStatRegistration:
    """A host stat's registration, checked on its own (the registry checks it against others).

    ``defaults`` is an instance of the host stat's frozen options dataclass; ``build`` gets only
    instances of that class.
    """
    check_registration(
        label=f"{HostStatRegistration.kind} {name!r}",
        name=name,
        defaults=defaults,
        flags=flags,
        families=families,
    )
    return HostStatRegistration(
        name=name,
        flags=tuple(flags),
        defaults=defaults,
        families=tuple(families),
        simulated_record=simulated_record,
        _build=build,  # type: ignore[arg-type]  # build() lets only the defaults' class in
    )


@dataclass(frozen=True, slots=True)
class HostStatSelection(Selection[HostStatRegistration]):
    """Each registered host stat's options, in exposition order: what a configuration reads."""

    kind: ClassVar[str] = "host stat"

    def host_stats(self) -> tuple[HostStat, ...]:
        """The enabled host stats, in exposition order."""
        return tuple(reg.build(options) for reg, options in self.enabled())


class HostStatRegistry(Registry[HostStatRegistration]):
    """Host-stat registrations in exposition order; refuses clashes (see the module)."""

    kind: ClassVar[str] = "host stat"

    def defaults(self) -> HostStatSelection:
        """Every host stat with its default options: the configuration without their flags."""
        return HostStatSelection(self.choices())

    def selection(self, values: Mapping[str, Mapping[str, object]]) -> HostStatSelection:
        """Every host stat's options: its defaults, with ``values`` (name -> option -> value)."""
        return HostStatSelection(self.choices(values))

    def reference_host_stats(self) -> tuple[HostStat, ...]:
        """Every host stat with its default options, enabled or not: the metrics reference's."""
        return tuple(reg.build(reg.defaults) for reg in self)
