"""A simulated hypervisor: many VMs with changing guest load, for load tests, demos and dashboards.

No libvirt: every VM lives in memory. Each VM has a vCPU count, a utilisation that wanders
(a mean-reverting random walk with rare bursts), and load averages computed from it the way
the Linux kernel does (an exponential moving average of the run queue, updated every 5 s).
vCPU counters only grow. A configurable share of agents misbehave as real ones do (absent,
too old, slow, hung), agents can go away for a few seconds and come back, and VMs can come
and go, all with the events libvirt would send.

Everything is a function of the seed and of the time since :meth:`SimulatedSource.connect`:
the random numbers are hashes of (seed, VM, step), so the same seed gives the same VMs and
the same load curves, however often they are read. A healthy agent answers each query with
what the query's registration makes of a read-only view of the VM
(:class:`~guestload.registration.SimulatedGuest`): the texts real agents send, judged by
the query's own parser. Each listing gives every VM the host stats asked for the same way: the
bulk-stats keys libvirt would report, made by each host stat's registration and judged by its
own parser. Memory sizes and the balloon statistics period are drawn per VM; a few VMs thrash
(their swap counters grow), the rest do not swap. A tenth of the VMs run Windows Server 2022,
the rest Debian 12 (what their agents report as their OS). An old agent lacks the commands of QEMU
versions after its own. Failures
go through the same classification as libvirt's errors (:mod:`guestload.queries.agent`). The
VMs, their agents' misbehaviour and the churn stay in one module because all are drawn from
those same hashes: a replay of the simulation depends on every draw being made in one place.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from uuid import UUID

from guestload.hoststats.catalog import HOST_STATS
from guestload.hoststats.hoststat import HostStat, Kept, fold_values
from guestload.hoststats.registry import HostStatRegistry
from guestload.identity import KUBEVIRT_UID_KEY
from guestload.model import (
    ConnectionHealth,
    DomainEvent,
    DomainInventory,
    EventKind,
    QueryReading,
    SourceFacts,
    VcpuStat,
    VcpuState,
)
from guestload.queries.catalog import QUERIES
from guestload.queries.query import GuestQuery, run_queries
from guestload.queries.registry import QueryRegistration, QueryRegistry
from guestload.registration import SimulatedGuest, SimulatedMemory, SimulatedOs
from guestload.simulation import AGENT_BEHAVIOUR_KEY, AgentBehaviour, AgentFailures, Simulation
from guestload.sources.libvirt_errors import (
    VIR_ERR_AGENT_COMMAND_FAILED,
    VIR_ERR_AGENT_UNRESPONSIVE,
    VIR_ERR_ARGUMENT_UNSUPPORTED,
    VIR_ERR_NO_DOMAIN,
    classify_libvirt_error,
)
from guestload.sources.protocol import EventListener, Identify

STEP_SECONDS = 5.0
"""The kernel recomputes its load averages every 5 s; the simulation moves in the same steps."""
LOAD_WINDOWS_SECONDS = (60.0, 300.0, 900.0)
_DECAYS = tuple(math.exp(-STEP_SECONDS / window) for window in LOAD_WINDOWS_SECONDS)

BOOT_STEPS = 2
"""A VM started during the simulation has its agent connected this many steps later."""
VCPU_COUNTS = ((1, 0.30), (2, 0.35), (4, 0.25), (8, 0.10))
"""vCPU count -> share of VMs."""
AGENT_AWAY_STEPS = (2, 6)
"""A flapping agent stays away this many steps (inclusive bounds: 10 to 30 s), then reconnects."""
NAMESPACES = ("default", "prod", "staging", "dev", "ci", "data", "web", "batch")
MAX_UTILISATION = 3.0
"""Utilisation is run queue per vCPU; above 1 the guest has more runnable tasks than vCPUs."""
_REVERSION = 0.08
_NOISE = 0.06
_BURST_CHANCE = 0.002
_MASK64 = (1 << 64) - 1
_FLAP_SALT = 0x666C6170
_MEMORY_SALT = 8
"""The salt of a VM's memory draw (salts 0 to 7 draw its other traits)."""
_OS_SALT = 9
"""The salt of a VM's operating system draw."""
GIB_PER_VCPU = (1, 2, 4)
"""A VM has one of these GiB of memory per vCPU."""
NO_STATS_PERIOD_SHARE = 0.2
"""The share of VMs whose balloon has no statistics period: only its size is reported."""
THRASHING_SHARE = 0.02
"""The share of VMs (with a statistics period) whose guest swaps continuously."""
WINDOWS_SHARE = 0.1
"""The share of VMs running Windows; the others run Debian 12 (:class:`SimulatedOs`)."""
LINUX = SimulatedOs()
WINDOWS = SimulatedOs(
    id="mswindows",
    name="Microsoft Windows",
    pretty_name="Windows Server 2022 Datacenter",
    version="Microsoft Windows Server 2022",
    version_id="2022",
    variant="server",
    variant_id="server",
    kernel_release="20348",
    kernel_version="10.0",
    machine="x86_64",
)
"""What QEMU's Windows agent reports for Windows Server 2022."""

# What libvirt says in each failure case (measured with real VMs; see queries.agent).
_NOT_CONFIGURED = "argument unsupported: QEMU guest agent is not configured"
_NOT_CONNECTED = "Guest agent is not responding: QEMU guest agent is not connected"
_NOT_FOUND = (
    "internal error: unable to execute QEMU agent command '{command}': "
    "The command {command} has not been found"
)
OLD_AGENT_QEMU = (7, 2)
"""The simulated old agent's QEMU version (as Debian 12 ships): it lacks later commands."""
_NO_SYNC = (
    "Guest agent is not responding: QEMU guest agent didn't respond to synchronization "
    "within '{seconds}' seconds"
)


def _mix(value: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of ``value``."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _unit(bits: int) -> float:
    """A uniform value in [0, 1) from the low 21 bits of ``bits``."""
    return (bits & 0x1FFFFF) / 0x200000


class _Vm:
    """One simulated VM: fixed traits and the state the simulation has advanced it to."""

    __slots__ = (
        "away",
        "behaviour",
        "busy",
        "delay_share",
        "domain_name",
        "guest_os",
        "host_stats_kept",
        "index",
        "inventory_metadata",
        "key",
        "loads",
        "mean",
        "memory_traits",
        "started_step",
        "step",
        "uptime",
        "util",
        "uuid",
        "vcpu_bases",
        "vcpu_weights",
        "vcpus",
        "wait_share",
    )

    def __init__(
        self, *, seed: int, index: int, failures: AgentFailures, step: int, booted: bool
    ) -> None:
        key = _mix(_mix(seed) ^ index)
        draws = [_mix(key ^ salt) for salt in range(8)]
        self.key = key
        self.index = index
        self.uuid = str(UUID(int=draws[0] << 64 | draws[1], version=4))
        namespace = NAMESPACES[draws[2] % len(NAMESPACES)]
        self.domain_name = f"{namespace}_vm-{index:05d}-{draws[2] >> 32:08x}"
        self.vcpus = _vcpu_count(_unit(draws[3]))
        self.behaviour = failures.behaviour(_unit(draws[4]))
        self.inventory_metadata: Mapping[str, str] = {
            KUBEVIRT_UID_KEY: self.uuid,
            AGENT_BEHAVIOUR_KEY: self.behaviour.value,
        }
        profile = _unit(draws[5])
        # Most VMs idle along, some are busy, a few run more tasks than they have vCPUs.
        if profile < 0.7:
            self.mean = 0.02 + 0.3 * profile
        elif profile < 0.97:
            self.mean = 0.4 + 0.5 * (profile - 0.7) / 0.27
        else:
            self.mean = 1.5
        self.delay_share = 0.005 + 0.02 * _unit(draws[6] >> 21)
        if _unit(draws[6]) < 0.05:
            self.delay_share += 0.2  # a noisy neighbour: vCPUs often wait for a host CPU
        self.wait_share = 0.01 * _unit(draws[6] >> 42)
        self.vcpu_weights = tuple(
            0.8 + 0.4 * _unit(_mix(draws[7] ^ vcpu)) for vcpu in range(self.vcpus)
        )
        self.started_step = step if not booted else -BOOT_STEPS
        self.host_stats_kept: Mapping[str, Kept] = {}
        """Each host stat's value at the last listing, with its simulated time."""
        self.away = False
        self.step = step
        self.util = self.mean
        if booted:
            # Up for hours to weeks: counters large, load averages settled.
            self.uptime = 3600.0 + 30 * 86400.0 * _unit(draws[7] >> 21)
            settled = self.mean * self.vcpus
            five = settled * (0.8 + 0.4 * _unit(draws[5] >> 21))
            self.loads = (five * (0.7 + 0.6 * _unit(draws[5] >> 42)), five, settled)
        else:
            self.uptime = 0.0
            self.loads = (0.0, 0.0, 0.0)
        self.busy = self.uptime * min(self.mean, 1.0)
        self.vcpu_bases = tuple(0.0 for _ in range(self.vcpus))
        memory_draw = _mix(key ^ _MEMORY_SALT)
        gib = self.vcpus * GIB_PER_VCPU[memory_draw % len(GIB_PER_VCPU)]
        stats_period = _unit(memory_draw >> 8) >= NO_STATS_PERIOD_SHARE
        thrashing = stats_period and _unit(memory_draw >> 29) < THRASHING_SHARE
        self.memory_traits = (
            gib * 1024 * 1024,
            0.97 if thrashing else 0.2 + 0.5 * _unit(memory_draw >> 50),
            thrashing,
            stats_period,
        )
        """Memory in KiB, the share in use, whether the guest thrashes, whether its balloon
        has a statistics period."""
        windows = _unit(_mix(key ^ _OS_SALT)) < WINDOWS_SHARE
        self.guest_os = WINDOWS if windows else LINUX

    def advance(self, step: int) -> None:
        """Move the VM forward to ``step``, one kernel load update at a time."""
        if step <= self.step:
            return
        key, mean, vcpus = self.key, self.mean, self.vcpus
        util, busy = self.util, self.busy
        one, five, fifteen = self.loads
        d1, d5, d15 = _DECAYS
        for current in range(self.step + 1, step + 1):
            # An inlined, cheaper relative of _mix: this loop runs per VM and step.
            bits = ((key ^ current) * 0x9E3779B97F4A7C15) & _MASK64
            bits = ((bits ^ (bits >> 29)) * 0xBF58476D1CE4E5B9) & _MASK64
            bits ^= bits >> 32
            noise = ((bits & 0x1FFFFF) + (bits >> 21 & 0x1FFFFF)) / 0x200000 - 1.0
            util += _REVERSION * (mean - util) + _NOISE * noise
            if (bits >> 42) / 0x400000 < _BURST_CHANCE:
                util += 1.0
            util = 0.0 if util < 0.0 else min(util, MAX_UTILISATION)
            queue = util * vcpus
            one = one * d1 + queue * (1.0 - d1)
            five = five * d5 + queue * (1.0 - d5)
            fifteen = fifteen * d15 + queue * (1.0 - d15)
            busy += (util if util < 1.0 else 1.0) * STEP_SECONDS
        self.uptime += (step - self.step) * STEP_SECONDS
        self.util, self.busy, self.step = util, busy, step
        self.loads = (one, five, fifteen)

    def inventory(self, host_stats: Mapping[str, object]) -> DomainInventory:
        vcpus = tuple(
            VcpuStat(
                id=vcpu,
                state=VcpuState.RUNNING,
                time_seconds=self.busy * weight,
                wait_seconds=self.uptime * weight * self.wait_share,
                delay_seconds=self.busy * weight * self.delay_share,
            )
            for vcpu, weight in enumerate(self.vcpu_weights)
        )
        return DomainInventory(
            uuid=self.uuid,
            domain_name=self.domain_name,
            vcpu_count=self.vcpus,
            vcpus=vcpus,
            metadata=self.inventory_metadata,
            host_stats=host_stats,
            domain_id=self.index + 1,
        )

    def guest(self, wall_seconds: float) -> SimulatedGuest:
        """What the collectors' simulated answers are made of, as the VM is now; the guest's
        last memory statistics are of ``wall_seconds`` (Unix time)."""
        size_kib, used_share, thrashing, stats_period = self.memory_traits
        return SimulatedGuest(
            loads=self.loads,
            busy_seconds=self.busy,
            uptime_seconds=self.uptime,
            vcpu_weights=self.vcpu_weights,
            wait_share=self.wait_share,
            delay_share=self.delay_share,
            memory=SimulatedMemory(
                size_kib=size_kib,
                used_share=used_share,
                thrashing=thrashing,
                stats_period=stats_period,
                updated_at_seconds=wall_seconds,
            ),
            os=self.guest_os,
        )

    def agent_connected(self, step: int) -> bool:
        return (
            self.behaviour is not AgentBehaviour.ABSENT
            and step >= self.started_step + BOOT_STEPS
            and not self.away
        )


def _vcpu_count(draw: float) -> int:
    threshold = 0.0
    for count, share in VCPU_COUNTS:
        threshold += share
        if draw < threshold:
            return count
    return VCPU_COUNTS[-1][0]


class SimulatedSource:
    """A :class:`~guestload.sources.protocol.Source` over simulated VMs (see the module).

    ``clock`` drives the simulation (tests pass a fake one). With churn or agent flaps, a
    daemon thread replaces VMs and disconnects agents on time and sends their events even
    when nobody polls; without the thread, listing the VMs catches up. Agents answer the
    queries registered in ``queries``; others are unknown commands to them. Each listing gives
    every VM a value of each of ``host_stats`` (registered in ``host_stat_registry``), whose
    timestamps follow ``wall_clock`` from :meth:`connect` on. ``answer_wait`` lets an agent's
    answer time pass (by default a wait that :meth:`close` ends early; tests pass one that
    moves their fake clock).
    """

    def __init__(
        self,
        *,
        simulation: Simulation,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        churn_thread: bool = True,
        queries: QueryRegistry = QUERIES,
        host_stats: Sequence[HostStat] = (),
        host_stat_registry: HostStatRegistry = HOST_STATS,
        answer_wait: Callable[[float], object] | None = None,
    ) -> None:
        self._simulation = simulation
        self._queries = queries
        self._host_stats = tuple(
            (host_stat, registration.simulated_record)
            for host_stat in host_stats
            if (registration := host_stat_registry.get(host_stat.name)) is not None
        )
        self._clock = clock
        self._wall_clock = wall_clock
        self._wall_origin = 0.0
        self._churn_thread = churn_thread and (
            simulation.churn_per_minute > 0 or simulation.agent_flaps_per_minute > 0
        )
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._answer_wait = self._closing.wait if answer_wait is None else answer_wait
        self._listener: EventListener | None = None
        self._origin: float | None = None
        self._vms: dict[str, _Vm] = {}
        self._population_step = 0
        self._next_index = simulation.vms
        self._churn_debt = 0.0
        self._flap_debt = 0.0
        self._pending_agents: list[tuple[int, str]] = []
        """(step, UUID): the agent of a booting or flapping VM connects at that step."""
        self._thread: threading.Thread | None = None

    # -- Source -----------------------------------------------------------------------------

    def connect(self) -> None:
        """Create the VMs on first use (all booted, agents answering); start churning."""
        with self._lock:
            self._closing.clear()
            if self._origin is None:
                self._origin = self._clock()
                self._wall_origin = self._wall_clock()
                for index in range(self._simulation.vms):
                    vm = self._new_vm(index, step=0, booted=True)
                    self._vms[vm.uuid] = vm
        if self._churn_thread and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(
                target=self._churn_loop, name="guestload-simulated-churn", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop churning and release calls blocked on hung agents."""
        self._closing.set()

    def list_running_domains(self) -> Sequence[DomainInventory]:
        with self._lock:
            step = self._step()
            events = self._advance_population(step)
            for vm in self._vms.values():
                vm.advance(step)
            inventories = [
                vm.inventory(self._host_stat_values(vm, step)) for vm in self._vms.values()
            ]
        self._deliver(events)
        return inventories

    def query_guest(
        self, uuid: str, queries: Sequence[GuestQuery], timeout_seconds: float
    ) -> Mapping[str, QueryReading]:
        with self._lock:
            vm = self._vms.get(uuid)
            if vm is not None:
                step = self._step()
                vm.advance(step)
                behaviour = vm.behaviour
                connected = vm.agent_connected(step)
                guest = vm.guest(self._wall_seconds(step))
        if vm is None:
            gone = _libvirt_error(VIR_ERR_NO_DOMAIN, f"Domain not found: no domain {uuid}")
            return dict.fromkeys((query.name for query in queries), gone)
        waited = False

        def ask(query: GuestQuery) -> QueryReading:
            nonlocal waited
            if behaviour is AgentBehaviour.ABSENT:
                return _libvirt_error(VIR_ERR_ARGUMENT_UNSUPPORTED, _NOT_CONFIGURED)
            if not connected:
                return _libvirt_error(VIR_ERR_AGENT_UNRESPONSIVE, _NOT_CONNECTED)
            if behaviour is AgentBehaviour.HUNG:
                # libvirt's agent response timeout: the call returns when it expires.
                self._answer_wait(timeout_seconds)
                seconds = max(1, math.ceil(timeout_seconds))
                return _libvirt_error(VIR_ERR_AGENT_UNRESPONSIVE, _NO_SYNC.format(seconds=seconds))
            delay = self._simulation.agent_latency_seconds
            if behaviour is AgentBehaviour.SLOW:
                delay = max(delay, timeout_seconds / 2)
            if delay > 0 and not waited:
                waited = True  # one answer time per call, as one agent round trip
                self._answer_wait(delay)
            registration = self._queries.get(query.name)
            old = behaviour is AgentBehaviour.OLD
            return _agent_reading(query, registration, guest, old_agent=old)

        return run_queries(queries, ask)

    def set_event_listener(self, listener: EventListener | None) -> None:
        self._listener = listener

    def facts(self) -> SourceFacts:
        """The same facts as the libvirt source, saying the hypervisor is simulated."""
        simulation = self._simulation
        return SourceFacts(
            library_version="none",
            daemon_version="none",
            load_method="simulated",
            uri=f"simulated:///?vms={simulation.vms}&seed={simulation.seed}",
        )

    def connection_health(self, identify: Identify) -> tuple[ConnectionHealth, ...] | None:
        """None: one simulated hypervisor."""
        del identify
        return None

    def unreachable_advice(self, error: str) -> str:
        """Nothing: the simulation is always reachable."""
        del error
        return ""

    # -- simulation -------------------------------------------------------------------------

    def _wall_seconds(self, step: int) -> float:
        """The Unix time of ``step``: the guests' statistics are as fresh as the step."""
        return self._wall_origin + step * STEP_SECONDS

    def _host_stat_values(self, vm: _Vm, step: int) -> Mapping[str, object]:
        """Each host stat's value for ``vm``: its simulated record, judged by its own parser
        and folded with the last listing's, as the libvirt source does."""
        if not self._host_stats:
            return {}
        guest = vm.guest(self._wall_seconds(step))
        values: dict[str, object] = {}
        for host_stat, simulated_record in self._host_stats:
            value = host_stat.parse(simulated_record(guest))
            if value is not None:
                values[host_stat.name] = value
        vm.host_stats_kept = fold_values(
            [host_stat for host_stat, _ in self._host_stats],
            values,
            vm.host_stats_kept,
            step * STEP_SECONDS,
        )
        return {name: kept.value for name, kept in vm.host_stats_kept.items()}

    def _step(self) -> int:
        if self._origin is None:
            return 0
        return max(0, int((self._clock() - self._origin) // STEP_SECONDS))

    def _new_vm(self, index: int, *, step: int, booted: bool) -> _Vm:
        return _Vm(
            seed=self._simulation.seed,
            index=index,
            failures=self._simulation.agent_failures,
            step=step,
            booted=booted,
        )

    def _advance_population(self, step: int) -> list[DomainEvent]:
        """Replace VMs (churn), disconnect agents (flaps) and connect agents up to ``step``.

        The events, in order. Which VMs and for how long depend only on the seed and the step.
        """
        events: list[DomainEvent] = []
        per_step = self._simulation.churn_per_minute * STEP_SECONDS / 60.0
        flaps_per_step = self._simulation.agent_flaps_per_minute * STEP_SECONDS / 60.0
        while self._population_step < step:
            self._population_step += 1
            current = self._population_step
            self._churn_debt += per_step
            replacements = int(self._churn_debt)
            self._churn_debt -= replacements
            for replacement in range(replacements):
                if self._vms:
                    uuids = list(self._vms)
                    pick = _mix(_mix(self._simulation.seed) ^ current << 20 ^ replacement)
                    victim = uuids[pick % len(uuids)]
                    del self._vms[victim]
                    events.append(DomainEvent(kind=EventKind.STOPPED, uuid=victim))
                vm = self._new_vm(self._next_index, step=current, booted=False)
                self._next_index += 1
                self._vms[vm.uuid] = vm
                events.append(DomainEvent(kind=EventKind.STARTED, uuid=vm.uuid))
                if vm.behaviour is not AgentBehaviour.ABSENT:
                    self._pending_agents.append((current + BOOT_STEPS, vm.uuid))
            due = [uuid for at, uuid in self._pending_agents if at <= current]
            self._pending_agents = [(at, u) for at, u in self._pending_agents if at > current]
            for uuid in due:
                connecting = self._vms.get(uuid)
                if connecting is not None:
                    connecting.away = False
                    events.append(DomainEvent(kind=EventKind.AGENT_CONNECTED, uuid=uuid))
            self._flap_debt += flaps_per_step
            flaps = int(self._flap_debt)
            self._flap_debt -= flaps
            if flaps:
                events += self._disconnect_agents(current, flaps)
        return events

    def _disconnect_agents(self, step: int, count: int) -> list[DomainEvent]:
        """Disconnect ``count`` connected agents at ``step``; each reconnects a few steps later."""
        connected = [uuid for uuid, vm in self._vms.items() if vm.agent_connected(step)]
        events: list[DomainEvent] = []
        low, high = AGENT_AWAY_STEPS
        for flap in range(min(count, len(connected))):
            pick = _mix(_mix(self._simulation.seed ^ _FLAP_SALT) ^ step << 20 ^ flap)
            uuid = connected.pop(pick % len(connected))
            self._vms[uuid].away = True
            away_steps = low + (pick >> 40) % (high - low + 1)
            self._pending_agents.append((step + away_steps, uuid))
            events.append(DomainEvent(kind=EventKind.AGENT_DISCONNECTED, uuid=uuid))
        return events

    def _churn_loop(self) -> None:
        while not self._closing.is_set():
            with self._lock:
                events = self._advance_population(self._step())
                origin = self._origin if self._origin is not None else self._clock()
                elapsed = self._clock() - origin
            self._deliver(events)
            self._closing.wait(STEP_SECONDS - elapsed % STEP_SECONDS + 0.01)

    def _deliver(self, events: Sequence[DomainEvent]) -> None:
        listener = self._listener
        if listener is None:
            return
        for event in events:
            listener(event)


def _agent_reading(
    query: GuestQuery,
    registration: QueryRegistration | None,
    guest: SimulatedGuest,
    *,
    old_agent: bool,
) -> QueryReading:
    """The reading of an agent that answers: the query's registered answer, judged by the
    query's own parser; an unknown command's error for a query not registered or newer than
    an old agent."""
    if registration is None:
        unknown = {"class": "CommandNotFound", "desc": f"{query.agent_command} not found"}
        return query.parse_agent_reply(json.dumps({"error": unknown}))
    if old_agent and registration.agent_since > OLD_AGENT_QEMU:
        message = _NOT_FOUND.format(command=query.agent_command)
        return _libvirt_error(VIR_ERR_AGENT_COMMAND_FAILED, message)
    answer = registration.simulated_answer(guest)
    if query.typed_info is not None:
        return query.parse_typed_info(answer)
    return query.parse_agent_reply(answer)


def _libvirt_error(code: int, message: str) -> QueryReading:
    """The reading the libvirt source would make of this libvirt error."""
    return QueryReading(state=classify_libvirt_error(code=code, message=message), detail=message)
