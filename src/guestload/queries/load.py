"""Turn libvirt errors and guest-agent answers into agent states and load readings.

Pure functions, no libvirt import: the libvirt source reads, this module judges. Everything a
guest sends is untrusted input, so every parser here returns a reading and never raises.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from guestload.model import AgentState, GuestLoad, LoadReading

# libvirt error codes (virErrorNumber in libvirt/virterror.h) that the classification names.
VIR_ERR_NO_SUPPORT = 3
"""The connection's driver lacks the call (e.g. the test driver has no guest info)."""
VIR_ERR_NO_DOMAIN = 42
"""The domain does not exist (any more)."""
VIR_ERR_OPERATION_INVALID = 55
"""Not applicable now; for guest calls: the domain is not running."""
VIR_ERR_OPERATION_TIMEOUT = 68
"""libvirt could not acquire the domain's state change lock in time."""
VIR_ERR_ARGUMENT_UNSUPPORTED = 74
"""For guest calls: the domain has no guest-agent channel configured."""
VIR_ERR_AGENT_UNRESPONSIVE = 86
"""The agent is not connected, or did not answer libvirt's synchronisation in time."""
VIR_ERR_AGENT_COMMAND_TIMEOUT = 112
"""The agent synchronised but did not answer the command in time."""
VIR_ERR_AGENT_COMMAND_FAILED = 113
"""The agent answered with an error, e.g. an unknown or disabled command."""

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

_DETAIL_VALUE_CHARS = 120
_COMMAND_NOT_FOUND_CLASS = "CommandNotFound"


def classify_libvirt_error(*, code: int, message: str) -> AgentState:
    """Map a libvirt error from a guest-load call to the agent state it means."""
    text = message.lower()
    if code == VIR_ERR_AGENT_UNRESPONSIVE:
        if "not connected" in text or "not available" in text:
            return AgentState.NOT_CONNECTED
        # "didn't respond to synchronization within 'N' seconds": a hung agent.
        return AgentState.TIMEOUT
    if code == VIR_ERR_AGENT_COMMAND_FAILED:
        if "has not been found" in text or "has been disabled" in text:
            return AgentState.UNSUPPORTED
        return AgentState.ERROR
    return _STATE_BY_CODE.get(code, AgentState.ERROR)


_STATE_BY_CODE: Mapping[int, AgentState] = {
    VIR_ERR_NO_SUPPORT: AgentState.UNSUPPORTED,
    VIR_ERR_NO_DOMAIN: AgentState.GONE,
    VIR_ERR_OPERATION_INVALID: AgentState.GONE,
    VIR_ERR_OPERATION_TIMEOUT: AgentState.BUSY,
    VIR_ERR_ARGUMENT_UNSUPPORTED: AgentState.NOT_CONFIGURED,
    VIR_ERR_AGENT_COMMAND_TIMEOUT: AgentState.TIMEOUT,
}


def parse_guest_info_load(info: Mapping[str, object]) -> LoadReading:
    """Read the load from a ``guestInfo(VIR_DOMAIN_GUEST_INFO_LOAD)`` result.

    No load keys at all (a frozen agent behind a response timeout answers ``{}``) is no data,
    never zeros. Extra keys are ignored.
    """
    if not isinstance(info, Mapping):
        return _invalid(f"guest info is a {type(info).__name__}, not a mapping")
    return _reading_from_values(info, GUEST_INFO_LOAD_KEYS)


def parse_agent_passthrough(reply: str) -> LoadReading:
    """Read the load from the agent's raw ``guest-get-load`` reply, e.g.
    ``{"return": {"load1m": 0.5, "load5m": 0.25, "load15m": 0}}``.

    A ``CommandNotFound`` error (unknown or disabled command) is unsupported, another agent
    error is an error, and any other shape is invalid.
    """
    document = _decode_reply(reply)
    if isinstance(document, LoadReading):
        return document
    if "error" in document:
        return _reading_from_agent_error(document["error"])
    answer = document.get("return")
    if not isinstance(answer, dict):
        return _invalid("reply has no 'return' object")
    return _reading_from_values(answer, PASSTHROUGH_LOAD_KEYS)


def _decode_reply(reply: str) -> dict[str, object] | LoadReading:
    """The reply's JSON object, or an invalid reading saying why there is none."""
    if not isinstance(reply, str):
        return _invalid(f"reply is a {type(reply).__name__}, not text")
    if len(reply) > MAX_PASSTHROUGH_REPLY_CHARS:
        return _invalid(f"reply of {len(reply)} characters exceeds {MAX_PASSTHROUGH_REPLY_CHARS}")
    try:
        document: object = json.loads(reply)
    except (ValueError, RecursionError):
        return _invalid("reply is not valid JSON")
    if not isinstance(document, dict):
        return _invalid(f"reply is a JSON {type(document).__name__}, not an object")
    return document


def _reading_from_agent_error(error: object) -> LoadReading:
    if not isinstance(error, dict):
        return _invalid("reply has a malformed 'error'")
    error_class = error.get("class")
    description = error.get("desc")
    if not isinstance(error_class, str):
        return _invalid("reply error has no class")
    detail = _short(description) if isinstance(description, str) else error_class
    if error_class == _COMMAND_NOT_FOUND_CLASS:
        # QEMU reports both unknown and disabled commands with this class.
        return LoadReading(state=AgentState.UNSUPPORTED, detail=detail)
    return LoadReading(state=AgentState.ERROR, detail=f"{_short(error_class)}: {detail}")


def _reading_from_values(values: Mapping[str, object], keys: tuple[str, str, str]) -> LoadReading:
    present = [key for key in keys if key in values]
    if not present:
        return LoadReading(state=AgentState.NO_DATA, detail="agent answered without load values")
    if len(present) != len(keys):
        missing = ", ".join(key for key in keys if key not in values)
        return _invalid(f"partial load values, missing {missing}")
    loads: list[float] = []
    for key in keys:
        load = _as_load(values[key])
        if isinstance(load, str):
            return _invalid(f"{key} {load}")
        loads.append(load)
    one, five, fifteen = loads
    return LoadReading(state=AgentState.OK, load=GuestLoad(one=one, five=five, fifteen=fifteen))


def _as_load(value: object) -> float | str:
    """``value`` as a load average, or why it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"is a {type(value).__name__}, not a number"
    try:
        number = float(value)
    except OverflowError:
        return "is out of range"
    if not math.isfinite(number):
        return f"is not finite ({_short(value)})"
    if number < 0:
        return f"is negative ({_short(value)})"
    if number > MAX_LOAD:
        return f"is above {MAX_LOAD:.0f} ({_short(value)})"
    return number


def _invalid(detail: str) -> LoadReading:
    return LoadReading(state=AgentState.INVALID, detail=detail)


def _short(value: object) -> str:
    """A bounded, printable rendering of guest-supplied text for details and logs."""
    text = repr(value) if not isinstance(value, str) else value.encode("unicode_escape").decode()
    if len(text) > _DETAIL_VALUE_CHARS:
        return text[: _DETAIL_VALUE_CHARS - 3] + "..."
    return text
