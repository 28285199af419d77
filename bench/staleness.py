"""Stale-series check: which simulated VMs exist at each step, and whether a scrape agrees.

The simulated source is a function of its seed and of the number of 5 s steps since it
connected: VMs replaced by churn, and in what order, depend on nothing else. So
:class:`PopulationReplay` runs the same :class:`~guestload.sources.simulated.SimulatedSource`
with the same :class:`~guestload.sources.simulated.Simulation` on a clock it moves one step at
a time, and records the step each VM started and stopped at, and the steps its agent went
away and came back at (agent flaps). A VM exists at step ``s`` when ``started <= s < stopped``.

A scrape cannot say which step its snapshot was polled at, but the VMs in it bound that step
from below: the snapshot contains a VM that started at step ``newest``, so its poll ran at
step ``newest`` or later. Any VM in the same scrape that had stopped at or before ``newest``
did not exist at that poll: a stale series. :func:`check_scrape` counts those (and VMs the
source never had), and the invariants that hold per VM: load series only next to agent state
``ok``, never from an agent that cannot answer, and the UUID that VM really has.

The same bound holds for flaps: the scrape's poll ran between step ``newest`` and the latest
step the scrape's time allows, so a load series of a VM whose agent was away during all of
those steps was invented (an agent that is back may have one again).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from guestload.identity import IdentityResolver
from guestload.model import AgentState, DomainEvent, EventKind
from guestload.simulation import AGENT_BEHAVIOUR_KEY, AgentBehaviour, Simulation
from guestload.sources.simulated import STEP_SECONDS, SimulatedSource

VmKey = tuple[str, str]
"""A VM as the exposition names it: (namespace, name)."""

_VM_SERIES_PREFIXES = ("kubevirt_vmi_", "guestload_agent_state{", "guestload_domain_info{")
_LOAD_FAMILY_PREFIX = "kubevirt_vmi_guest_load_"
_LABEL = re.compile(r'(\w+)="((?:[^"\\\n]|\\.)*)"')
#: Agents that never return a load: a load series from one of them would be invented.
_SILENT_BEHAVIOURS = frozenset({AgentBehaviour.ABSENT, AgentBehaviour.OLD, AgentBehaviour.HUNG})


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportedVms:
    """The per-VM series of one exposition, grouped by VM."""

    series: Mapping[VmKey, int]
    """VM -> number of series carrying its namespace and name."""
    uuids: Mapping[VmKey, str]
    """VM -> ``uuid`` label of its ``guestload_domain_info``."""
    states: Mapping[VmKey, tuple[str, ...]]
    """VM -> the ``state`` labels of its load query's ``guestload_agent_state`` series."""
    with_load: frozenset[VmKey]
    """VMs with at least one ``kubevirt_vmi_guest_load_*`` series."""


def exported_vms(text: str) -> ExportedVms:
    """Group the VM series of a text-format exposition by (namespace, name)."""
    series: dict[VmKey, int] = {}
    uuids: dict[VmKey, str] = {}
    states: dict[VmKey, list[str]] = {}
    with_load: set[VmKey] = set()
    for line in text.splitlines():
        if not line.startswith(_VM_SERIES_PREFIXES):
            continue
        name, _, rest = line.partition("{")
        labels = _labels(rest.rpartition("}")[0])
        key = (labels.get("namespace", ""), labels.get("name", ""))
        series[key] = series.get(key, 0) + 1
        if name == "guestload_domain_info":
            uuids[key] = labels.get("uuid", "")
        elif name == "guestload_agent_state" and labels.get("query") == "load":
            states.setdefault(key, []).append(labels.get("state", ""))
        elif name.startswith(_LOAD_FAMILY_PREFIX):
            with_load.add(key)
    return ExportedVms(
        series=series,
        uuids=uuids,
        states={key: tuple(values) for key, values in states.items()},
        with_load=frozenset(with_load),
    )


def _labels(text: str) -> dict[str, str]:
    """The labels of one series (``a="1",b="2"``), values left escaped."""
    if "\\" in text:
        return dict(_LABEL.findall(text))
    # Without a backslash no value holds a quote, so '",' only ever ends a value.
    pairs = (part.partition('="') for part in text.removesuffix('"').split('",'))
    return {key: value for key, _, value in pairs}


class PopulationReplay:
    """The simulated population replayed step by step: when each VM started and stopped."""

    def __init__(
        self, *, simulation: Simulation, node: str, default_namespace: str = "libvirt"
    ) -> None:
        self._now = 0.0
        self._source = SimulatedSource(
            simulation=simulation, clock=lambda: self._now, churn_thread=False
        )
        self._resolver = IdentityResolver(node=node, default_namespace=default_namespace)
        self.step = 0
        self.started: dict[VmKey, int] = {}
        self.stopped: dict[VmKey, int] = {}
        self.uuids: dict[VmKey, str] = {}
        self.behaviours: dict[VmKey, AgentBehaviour] = {}
        self.agent_away: dict[VmKey, list[tuple[int, int | None]]] = {}
        """VM -> [(step its agent went away, step it came back or None), ...]."""
        self.flaps = 0
        """Agent disconnections replayed."""
        self._keys: dict[str, VmKey] = {}
        self._running: set[VmKey] = set()
        self._events: list[DomainEvent] = []
        self._source.set_event_listener(self._events.append)
        self._source.connect()
        self._record(0)

    def advance_to(self, step: int) -> None:
        """Replay every step up to ``step`` (a step already replayed costs nothing)."""
        while self.step < step:
            self.step += 1
            self._now = self.step * STEP_SECONDS
            self._record(self.step)

    def away_throughout(self, key: VmKey, first: int, last: int) -> bool:
        """True when the agent of ``key`` was away at every step from ``first`` to ``last``."""
        return any(
            went <= first and (back is None or last < back)
            for went, back in self.agent_away.get(key, ())
        )

    def exists(self, key: VmKey, step: int) -> bool:
        """True when ``key`` ran at ``step`` (which must be replayed already)."""
        started = self.started.get(key)
        return started is not None and started <= step < self.stopped.get(key, step + 1)

    def _record(self, step: int) -> None:
        running: set[VmKey] = set()
        for domain in self._source.list_running_domains():
            key = self._keys.get(domain.uuid)
            if key is None:
                identity = self._resolver.resolve(domain)
                key = (identity.namespace, identity.name)
                self._keys[domain.uuid] = key
                self.started[key] = step
                self.uuids[key] = domain.uuid
                behaviour = domain.metadata[AGENT_BEHAVIOUR_KEY]
                self.behaviours[key] = AgentBehaviour(behaviour)
            running.add(key)
        for key in self._running - running:
            self.stopped[key] = step
        self._running = running
        for event in self._events:
            flapped = self._keys.get(event.uuid)
            if flapped is None:
                continue
            spells = self.agent_away.setdefault(flapped, [])
            if event.kind is EventKind.AGENT_DISCONNECTED:
                spells.append((step, None))
                self.flaps += 1
            elif event.kind is EventKind.AGENT_CONNECTED and spells and spells[-1][1] is None:
                spells[-1] = (spells[-1][0], step)
        self._events.clear()


@dataclass(frozen=True, slots=True, kw_only=True)
class ScrapeCheck:
    """What one scrape's VM series say when held against the replayed population."""

    vms: int
    """VMs with series in the scrape."""
    newest_start_step: int
    """The latest step at which a VM in the scrape started: its poll ran at this step or later."""
    stale_vms: tuple[VmKey, ...]
    """VMs in the scrape that did not exist at its poll (stopped by then, or never existed)."""
    stale_series: int
    """Series of those VMs."""
    stopped_steps: tuple[int, ...]
    """Stop steps of VMs in the scrape that the replay has seen stop (any, stale or not)."""
    load_without_ok: tuple[VmKey, ...]
    """VMs with a load series whose agent state is not (only) ``ok``."""
    load_from_silent_agent: tuple[VmKey, ...]
    """VMs with a load series although their simulated agent can never answer."""
    state_count_wrong: tuple[VmKey, ...]
    """VMs without exactly one ``guestload_agent_state`` series."""
    uuid_wrong: tuple[VmKey, ...]
    """VMs whose ``guestload_domain_info`` UUID is missing or not the VM's own."""
    load_while_agent_away: tuple[VmKey, ...] = ()
    """VMs with a load series although their agent was away at every step the poll can be at."""

    @property
    def violations(self) -> int:
        """Every broken invariant in the scrape, counted per VM."""
        return (
            len(self.stale_vms)
            + len(self.load_without_ok)
            + len(self.load_from_silent_agent)
            + len(self.state_count_wrong)
            + len(self.uuid_wrong)
            + len(self.load_while_agent_away)
        )


def check_scrape(
    exported: ExportedVms, replay: PopulationReplay, *, latest_step: int | None = None
) -> ScrapeCheck:
    """Hold a scrape against the population (replayed at least to the scrape's time).

    ``latest_step`` is the latest step the scrape's poll can have run at (default: the step
    replayed to).
    """
    known = [key for key in exported.series if key in replay.started]
    newest = max((replay.started[key] for key in known), default=0)
    stale = _sorted(key for key in exported.series if not replay.exists(key, newest))
    stopped_steps = tuple(
        sorted(replay.stopped[key] for key in exported.series if key in replay.stopped)
    )
    ok = AgentState.OK.value
    return ScrapeCheck(
        vms=len(exported.series),
        newest_start_step=newest,
        stale_vms=stale,
        stale_series=sum(exported.series[key] for key in stale),
        stopped_steps=stopped_steps,
        load_without_ok=_sorted(
            key for key in exported.with_load if exported.states.get(key) != (ok,)
        ),
        load_from_silent_agent=_sorted(
            key for key in exported.with_load if replay.behaviours.get(key) in _SILENT_BEHAVIOURS
        ),
        state_count_wrong=_sorted(
            key for key in exported.series if len(exported.states.get(key, ())) != 1
        ),
        uuid_wrong=_sorted(
            key
            for key in exported.series
            if key in replay.uuids and exported.uuids.get(key) != replay.uuids[key]
        ),
        load_while_agent_away=_sorted(
            key
            for key in exported.with_load
            if replay.away_throughout(
                key, newest, replay.step if latest_step is None else latest_step
            )
        ),
    )


def _sorted(keys: Iterable[VmKey]) -> tuple[VmKey, ...]:
    return tuple(sorted(keys))
