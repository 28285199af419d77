"""The guest's own CPU time by mode: ``guest-get-cpustats`` (Linux guests).

The agent reads the guest's ``/proc/stat`` and answers one entry per guest CPU with the time
spent in each mode, in milliseconds: ``{"return": [{"cpu": 0, "type": "linux", "user": 200,
"system": 1840, "idle": 0, "iowait": 87520, ...}]}``. It tells a CPU queue (user and system
time) from an I/O stall (iowait: the vCPU idles while tasks wait for a disk) and shows what
the guest lost to the host (steal). QEMU's agent has it since 7.1; libvirt has no typed API
for it, so it goes through the agent passthrough, which marks each domain tainted
(``custom-ga-command``) once per run.

Exported per VM as a counter summed over the guest's CPUs, or per guest CPU on request. The
exporter keeps the counter monotonic itself: a counter that goes backwards (the guest
rebooted) counts again from zero, and a CPU that goes away keeps what it had counted, so a
CPU unplug is not mistaken for a reset of the sum. ``guest`` and ``guest_nice`` are left out:
Linux already counts them in ``user`` and ``nice``.

Registered as :data:`REGISTRATION`: ``--collector.guest-cpu`` (on by default) asks it,
``--collector.guest-cpu.per-cpu`` exports it per guest CPU.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from guestload.metricspec import VM_LABELS, MetricSpec, MetricType, VmSample
from guestload.model import AgentState, QueryReading
from guestload.queries.agent import invalid, reply_return, short
from guestload.queries.query import GuestQuery
from guestload.queries.registry import registration
from guestload.registration import CollectorFlag, SimulatedGuest

MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
"""The modes exported, in the order of Linux's ``/proc/stat``."""

MAX_GUEST_CPUS = 8192
"""The most guest CPUs accepted in one answer (QEMU allows at most a few thousand vCPUs)."""

MAX_REPLY_CHARS = 4 * 1024 * 1024
"""Longest reply parsed: about 250 characters per CPU at :data:`MAX_GUEST_CPUS`, with room."""

MAX_MILLISECONDS = 2**63 - 1
"""qemu-ga's counters are unsigned 64-bit; above the signed range is broken or hostile."""

_LINUX = "linux"

GUEST_CPU_HELP = (
    "Guest CPU time by mode as the guest kernel counts it, read from the QEMU guest agent "
    "(guest-get-cpustats){scope}. Monotonic: a guest reboot counts as a counter reset."
)
GUEST_CPU_SECONDS = MetricSpec(
    "guestload_guest_cpu_seconds",
    MetricType.COUNTER,
    GUEST_CPU_HELP.format(scope=", summed over the guest's CPUs"),
    (*VM_LABELS, "mode"),
)
GUEST_CPU_SECONDS_PER_CPU = MetricSpec(
    "guestload_guest_cpu_seconds",
    MetricType.COUNTER,
    GUEST_CPU_HELP.format(scope=", per guest CPU"),
    (*VM_LABELS, "cpu", "mode"),
)

GUEST_CPU_LAST_POLL = MetricSpec(
    "guestload_guest_cpu_last_poll_ratio",
    MetricType.GAUGE,
    "Share of the guest's CPU time between its last two guest-get-cpustats answers (one poll "
    "interval), summed over the guest's CPUs: busy (user, nice, system, irq, softirq), "
    "iowait and steal. Absent after the first answer and after a counter reset.",
    (*VM_LABELS, "share"),
)

BUSY_MODES = ("user", "nice", "system", "irq", "softirq")
"""The modes that are guest work; steal is the host's, idle and iowait are no work."""
LAST_POLL_SHARES = {"busy": BUSY_MODES, "iowait": ("iowait",), "steal": ("steal",)}
"""Each ``share`` label value of :data:`GUEST_CPU_LAST_POLL` and the modes it adds up."""

CpuMilliseconds = Mapping[int, Mapping[str, int]]
"""Guest CPU -> mode -> milliseconds, as one answer reports them."""


@dataclass(frozen=True, slots=True)
class GuestCpuTimes:
    """What is kept per domain: the last answer, and the monotonic seconds counted so far."""

    last: CpuMilliseconds
    """The last milliseconds of every guest CPU ever reported, so a CPU that comes back
    online counts only what it grew by."""
    online: frozenset[int]
    """The guest CPUs of the latest answer."""
    seconds: Mapping[int, Mapping[str, float]]
    """Guest CPU -> mode -> seconds counted; CPUs no longer reported keep their count."""
    totals: Mapping[str, float]
    """Mode -> seconds counted over every guest CPU (summed once here, not at each render)."""
    last_poll: Mapping[str, float] | None = None
    """Share label -> its share of the CPU time between the last two answers; None after the
    first answer, when no time passed, or when a counter went backwards."""


@dataclass(frozen=True, slots=True)
class CpuStatsQuery(GuestQuery):
    """Guest CPU time by mode, summed over the guest's CPUs unless ``per_cpu``."""

    per_cpu: bool = False

    name = "cpustats"
    agent_command = "guest-get-cpustats"

    @property
    def families(self) -> tuple[MetricSpec, ...]:
        seconds = GUEST_CPU_SECONDS_PER_CPU if self.per_cpu else GUEST_CPU_SECONDS
        return (seconds, GUEST_CPU_LAST_POLL)

    def parse_agent_reply(self, reply: object) -> QueryReading:
        return parse_cpustats_reply(reply)

    def fold(self, previous: object | None, value: object) -> object:
        if not isinstance(value, Mapping):
            return previous
        return accumulate(previous if isinstance(previous, GuestCpuTimes) else None, value)

    def samples(self, value: object) -> Iterator[VmSample]:
        if not isinstance(value, GuestCpuTimes):
            return
        if self.per_cpu:
            for cpu in sorted(value.online):
                counted = value.seconds[cpu]
                for mode in MODES:
                    if mode in counted:
                        yield GUEST_CPU_SECONDS_PER_CPU, (str(cpu), mode), counted[mode]
        else:
            for mode, seconds in value.totals.items():
                yield GUEST_CPU_SECONDS, (mode,), seconds
        if value.last_poll is not None:
            for share, ratio in value.last_poll.items():
                yield GUEST_CPU_LAST_POLL, (share,), ratio


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuStatsOptions:
    """The CPU statistics query's options (``--collector.guest-cpu*``)."""

    enabled: bool = True
    """Ask guest agents for CPU time by mode (``guest-get-cpustats``, agent passthrough)."""
    per_cpu: bool = False
    """Export guest CPU time per guest CPU instead of summed over them."""


_WINDOWS_OS_ID = "mswindows"
_WINDOWS_REPLY = json.dumps(
    {
        "error": {
            "class": "GenericError",
            "desc": "this feature or command is not currently supported",
        }
    }
)
"""What the Windows guest agent answers: it has no ``guest-get-cpustats``."""


def simulated_reply(guest: SimulatedGuest) -> str:
    """A healthy agent's reply: per guest CPU, the mode times in milliseconds on Linux; the
    Windows agent's unsupported-command error on Windows."""
    if guest.os.id == _WINDOWS_OS_ID:
        return _WINDOWS_REPLY
    entries: list[dict[str, object]] = []
    for cpu, weight in enumerate(guest.vcpu_weights):
        busy = guest.busy_seconds * weight
        iowait = guest.uptime_seconds * weight * guest.wait_share
        entries.append(
            {
                "cpu": cpu,
                "type": _LINUX,
                "user": int(busy * 800),
                "system": int(busy * 200),
                "idle": int(max(guest.uptime_seconds - busy - iowait, 0.0) * 1000),
                "iowait": int(iowait * 1000),
                "steal": int(busy * guest.delay_share * 1000),
            }
        )
    return json.dumps({"return": entries})


REGISTRATION = registration(
    name=CpuStatsQuery.name,
    defaults=CpuStatsOptions(),
    flags=(
        CollectorFlag(
            "--collector.guest-cpu",
            "enabled",
            "ask guest agents for CPU time by mode (guest-get-cpustats, through libvirt's agent "
            "passthrough, which marks each domain tainted once per run; default: %(default)s)",
        ),
        CollectorFlag(
            "--collector.guest-cpu.per-cpu",
            "per_cpu",
            "export guest CPU time per guest CPU (a cpu label) instead of summed per VM",
        ),
    ),
    build=lambda options: CpuStatsQuery(per_cpu=options.per_cpu),
    families=(GUEST_CPU_SECONDS, GUEST_CPU_SECONDS_PER_CPU, GUEST_CPU_LAST_POLL),
    agent_since=(7, 1),
    simulated_answer=simulated_reply,
)


def accumulate(previous: GuestCpuTimes | None, answer: CpuMilliseconds) -> GuestCpuTimes:
    """Count ``answer`` on top of ``previous``: what each counter grew by since the last answer.

    A counter seen for the first time (the first answer, a CPU plugged in) counts its whole
    value; one that went backwards was reset (a reboot) and counts its whole value too. The
    last-poll shares come from the same pass (see :func:`last_poll_shares`).
    """
    last: CpuMilliseconds = previous.last if previous is not None else {}
    online = previous.online if previous is not None else frozenset()
    # CPUs the answer leaves out keep their counts, shared with ``previous`` (never changed).
    seconds: dict[int, Mapping[str, float]] = dict(previous.seconds) if previous else {}
    gained: dict[str, int] | None = dict.fromkeys(MODES, 0) if previous is not None else None
    for cpu, modes in answer.items():
        before = last.get(cpu, {})
        counted = dict(seconds.get(cpu, {}))
        for mode, milliseconds in modes.items():
            old = before.get(mode)
            if old is None:
                grown = milliseconds
            elif milliseconds < old:
                grown = milliseconds
                if cpu in online:
                    gained = None
            else:
                grown = milliseconds - old
                if gained is not None and cpu in online:
                    gained[mode] += grown
            counted[mode] = counted.get(mode, 0.0) + grown / 1000.0
        seconds[cpu] = counted
    per_mode: dict[str, list[float]] = {}
    for cpu_seconds in seconds.values():  # one pass over the CPUs, in their order
        for mode, counted_seconds in cpu_seconds.items():
            per_mode.setdefault(mode, []).append(counted_seconds)
    totals = {mode: sum(per_mode[mode]) for mode in MODES if mode in per_mode}
    return GuestCpuTimes(
        last={**last, **answer},
        online=frozenset(answer),
        seconds=seconds,
        totals=totals,
        last_poll=last_poll_shares(gained),
    )


def last_poll_shares(gained: Mapping[str, int] | None) -> Mapping[str, float] | None:
    """Each share's part of the CPU time the guest's CPUs ``gained`` (mode -> milliseconds)
    since the previous answer.

    Only CPUs of both answers count, so a CPU plugged in between adds no time it had before.
    None where there is no previous answer (``gained`` is None), no time passed, or a counter
    went backwards (a reboot; None too): the time between the answers is then not known.
    """
    if gained is None:
        return None
    total = sum(gained.values())
    if total <= 0:
        return None
    return {
        share: sum(gained[mode] for mode in modes) / total
        for share, modes in LAST_POLL_SHARES.items()
    }


def parse_cpustats_reply(reply: object) -> QueryReading:
    """Judge the agent's raw ``guest-get-cpustats`` reply.

    The value of an ``ok`` reading maps each guest CPU to its modes' milliseconds. Entries of
    other types than ``linux`` are skipped (none but Linux is defined); an answer with none is
    no data. Anything malformed makes the whole answer invalid: a partial answer would make
    the sum jump.
    """
    answer = reply_return(reply, max_chars=MAX_REPLY_CHARS)
    if isinstance(answer, QueryReading):
        return answer
    if not isinstance(answer, list) or len(answer) > MAX_GUEST_CPUS:
        return invalid(
            "reply has no 'return' list"
            if not isinstance(answer, list)
            else f"{len(answer)} CPUs exceed {MAX_GUEST_CPUS}"
        )
    cpus: dict[int, dict[str, int]] = {}
    for entry in answer:
        parsed = _parse_entry(entry)
        if isinstance(parsed, QueryReading):
            return parsed
        if parsed is None:
            continue
        cpu, modes = parsed
        if cpu in cpus:
            return invalid(f"cpu {cpu} is reported twice")
        cpus[cpu] = modes
    if not cpus:
        return QueryReading(state=AgentState.NO_DATA, detail="agent answered without Linux CPUs")
    return QueryReading(state=AgentState.OK, value=cpus)


def _parse_entry(entry: object) -> tuple[int, dict[str, int]] | QueryReading | None:
    """One CPU's number and modes, an invalid reading, or None for a non-Linux entry."""
    if not isinstance(entry, dict):
        return invalid(f"a CPU entry is a {type(entry).__name__}, not an object")
    if entry.get("type") != _LINUX:
        return None
    cpu = entry.get("cpu")
    if isinstance(cpu, bool) or not isinstance(cpu, int) or not 0 <= cpu < MAX_GUEST_CPUS:
        return invalid(f"cpu {short(cpu)} is not a CPU number")
    modes: dict[str, int] = {}
    for mode in MODES:
        if mode not in entry:
            continue
        value = entry[mode]
        if type(value) is int and 0 <= value <= MAX_MILLISECONDS:  # nearly every value
            modes[mode] = value
            continue
        milliseconds = _as_milliseconds(value)
        if isinstance(milliseconds, str):
            return invalid(f"cpu {cpu} {mode} {milliseconds}")
        modes[mode] = milliseconds
    return cpu, modes


def _as_milliseconds(value: object) -> int | str:
    """``value`` as a millisecond counter, or why it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"is a {type(value).__name__}, not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"is not finite ({short(value)})"
    if value < 0:
        return f"is negative ({short(value)})"
    if value > MAX_MILLISECONDS:
        return f"is above {MAX_MILLISECONDS} ({short(value)})"
    return int(value)
