"""The guest's load average: ``guest-get-load``, or libvirt's typed guest info where it has it.

The load average counts runnable and uninterruptible tasks, as the guest kernel computes it.
libvirt >= 11.2 reads it with ``virDomainGetGuestInfo(VIR_DOMAIN_GUEST_INFO_LOAD)`` (keys
``load.1m``, ``load.5m``, ``load.15m``); older libraries fall back to the agent's own command,
whose reply has ``load1m``, ``load5m`` and ``load15m``. QEMU's agent has it since 10.0.

Registered as :data:`REGISTRATION`: ``--collector.load`` (on by default) asks it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from guestload.metricspec import VM_LABELS, MetricSpec, MetricType, VmSample
from guestload.model import AgentState, QueryReading
from guestload.queries.agent import invalid, reply_return, short
from guestload.queries.query import GuestQuery, TypedInfo
from guestload.queries.registry import registration
from guestload.registration import CollectorFlag, SimulatedGuest

MAX_LOAD = float(2**22)
"""The largest load accepted as real: Linux's PID_MAX_LIMIT (4,194,304 tasks on 64-bit).

The load average counts runnable and uninterruptible tasks, so it cannot exceed the number
of tasks a kernel can have; anything above is a broken or hostile answer.
"""

MAX_PASSTHROUGH_REPLY_CHARS = 64 * 1024
"""Longest agent passthrough reply parsed; a real guest-get-load reply is under 100 characters."""

GUEST_INFO_LOAD_KEYS = ("load.1m", "load.5m", "load.15m")
"""The keys of ``virDomainGetGuestInfo(VIR_DOMAIN_GUEST_INFO_LOAD)``."""

PASSTHROUGH_LOAD_KEYS = ("load1m", "load5m", "load15m")
"""The keys of the agent's own ``guest-get-load`` reply."""

LOAD_HELP = (
    "Guest load average over {window}, as the guest kernel counts it (runnable plus "
    "uninterruptible tasks), read from the QEMU guest agent (guest-get-load) at each poll."
)
LOAD_1M = MetricSpec(
    "kubevirt_vmi_guest_load_1m",
    MetricType.GAUGE,
    LOAD_HELP.format(window="1 minute"),
    VM_LABELS,
)
LOAD_5M = MetricSpec(
    "kubevirt_vmi_guest_load_5m",
    MetricType.GAUGE,
    LOAD_HELP.format(window="5 minutes"),
    VM_LABELS,
)
LOAD_15M = MetricSpec(
    "kubevirt_vmi_guest_load_15m",
    MetricType.GAUGE,
    LOAD_HELP.format(window="15 minutes"),
    VM_LABELS,
)


@dataclass(frozen=True, slots=True)
class GuestLoad:
    """A guest's load average: runnable plus uninterruptible tasks, as the kernel counts them."""

    one: float
    five: float
    fifteen: float


class LoadQuery(GuestQuery):
    """The guest's 1, 5 and 15 minute load averages."""

    name = "load"
    agent_command = "guest-get-load"
    typed_info = TypedInfo.LOAD

    @property
    def families(self) -> tuple[MetricSpec, ...]:
        return (LOAD_1M, LOAD_5M, LOAD_15M)

    def parse_typed_info(self, info: object) -> QueryReading:
        return parse_guest_info_load(info)

    def parse_agent_reply(self, reply: object) -> QueryReading:
        return parse_agent_passthrough(reply)

    def samples(self, value: object) -> Iterator[VmSample]:
        if isinstance(value, GuestLoad):
            yield LOAD_1M, (), value.one
            yield LOAD_5M, (), value.five
            yield LOAD_15M, (), value.fifteen


LOAD = LoadQuery()


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadOptions:
    """The load query's options (``--collector.load``)."""

    enabled: bool = True
    """Ask guest agents for their load average and export it (off where virt-handler does)."""


def simulated_guest_info(guest: SimulatedGuest) -> dict[str, float]:
    """What libvirt's guest info of a healthy agent holds, to two decimals as Linux shows it."""
    return {
        key: round(value, 2) for key, value in zip(GUEST_INFO_LOAD_KEYS, guest.loads, strict=True)
    }


REGISTRATION = registration(
    name=LOAD.name,
    defaults=LoadOptions(),
    flags=(
        CollectorFlag(
            "--collector.load",
            "enabled",
            "ask guest agents for their load average and export kubevirt_vmi_guest_load_* (off "
            "where KubeVirt's virt-handler already exports them; default: %(default)s)",
        ),
    ),
    build=lambda _options: LOAD,
    families=LOAD.families,
    agent_since=(10, 0),
    simulated_answer=simulated_guest_info,
)


def parse_guest_info_load(info: object) -> QueryReading:
    """Read the load from a ``guestInfo(VIR_DOMAIN_GUEST_INFO_LOAD)`` result.

    No load keys at all (a frozen agent behind a response timeout answers ``{}``) is no data,
    never zeros. Extra keys are ignored.
    """
    if type(info) is not dict and not isinstance(info, Mapping):  # libvirt gives a dict
        return invalid(f"guest info is a {type(info).__name__}, not a mapping")
    return _reading_from_values(info, GUEST_INFO_LOAD_KEYS)


def parse_agent_passthrough(reply: object) -> QueryReading:
    """Read the load from the agent's raw ``guest-get-load`` reply, e.g.
    ``{"return": {"load1m": 0.5, "load5m": 0.25, "load15m": 0}}``.

    A ``CommandNotFound`` error (unknown or disabled command) is unsupported, another agent
    error is an error, and any other shape is invalid.
    """
    answer = reply_return(reply, max_chars=MAX_PASSTHROUGH_REPLY_CHARS)
    if isinstance(answer, QueryReading):
        return answer
    if not isinstance(answer, dict):
        return invalid("reply has no 'return' object")
    return _reading_from_values(answer, PASSTHROUGH_LOAD_KEYS)


def _reading_from_values(values: Mapping[str, object], keys: tuple[str, str, str]) -> QueryReading:
    first, second, third = keys
    one, five, fifteen = values.get(first), values.get(second), values.get(third)
    if (
        type(one) is float
        and type(five) is float
        and type(fifteen) is float
        and 0.0 <= one <= MAX_LOAD
        and 0.0 <= five <= MAX_LOAD
        and 0.0 <= fifteen <= MAX_LOAD
    ):  # nearly every answer: what the checks below would accept unchanged
        return QueryReading(
            state=AgentState.OK, value=GuestLoad(one=one, five=five, fifteen=fifteen)
        )
    present = [key for key in keys if key in values]
    if not present:
        return QueryReading(state=AgentState.NO_DATA, detail="agent answered without load values")
    if len(present) != len(keys):
        missing = ", ".join(key for key in keys if key not in values)
        return invalid(f"partial load values, missing {missing}")
    loads: list[float] = []
    for key in keys:
        load = _as_load(values[key])
        if isinstance(load, str):
            return invalid(f"{key} {load}")
        loads.append(load)
    one, five, fifteen = loads
    return QueryReading(state=AgentState.OK, value=GuestLoad(one=one, five=five, fifteen=fifteen))


def _as_load(value: object) -> float | str:
    """``value`` as a load average, or why it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"is a {type(value).__name__}, not a number"
    try:
        number = float(value)
    except OverflowError:
        return "is out of range"
    if not math.isfinite(number):
        return f"is not finite ({short(value)})"
    if number < 0:
        return f"is negative ({short(value)})"
    if number > MAX_LOAD:
        return f"is above {MAX_LOAD:.0f} ({short(value)})"
    return number
