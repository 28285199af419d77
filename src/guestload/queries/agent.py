"""Judging what comes back from a guest-agent call: libvirt's errors and the agent's replies.

Pure functions, no libvirt import: the sources call, this module and the queries judge.
Everything a guest sends is untrusted input, so nothing here raises on bad input: it returns
a reading that says what was wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from guestload.model import AgentState, QueryReading

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

_DETAIL_VALUE_CHARS = 120
_COMMAND_NOT_FOUND_CLASS = "CommandNotFound"
#: How QEMU's agent describes a command it has but cannot run on this guest (e.g. Windows
#: for guest-get-cpustats): QERR_UNSUPPORTED.
_UNSUPPORTED_DESCRIPTION = "not currently supported"


def classify_libvirt_error(*, code: int, message: str) -> AgentState:
    """Map a libvirt error from a guest-agent call to the agent state it means."""
    text = message.lower()
    if code == VIR_ERR_AGENT_UNRESPONSIVE:
        if "not connected" in text or "not available" in text:
            return AgentState.NOT_CONNECTED
        # "didn't respond to synchronization within 'N' seconds": a hung agent.
        return AgentState.TIMEOUT
    if code == VIR_ERR_AGENT_COMMAND_FAILED:
        if (
            "has not been found" in text
            or "has been disabled" in text
            or _UNSUPPORTED_DESCRIPTION in text
        ):
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


def reply_return(reply: object, *, max_chars: int) -> object | QueryReading:
    """The ``return`` member (None if missing) of an agent's raw JSON reply, or the reading
    that replaces it.

    An agent error comes back as ``unsupported`` (unknown, disabled or unsupported command)
    or ``error``; a reply that is not a JSON object with a ``return`` is ``invalid``.
    """
    if not isinstance(reply, str):
        return invalid(f"reply is a {type(reply).__name__}, not text")
    if len(reply) > max_chars:
        return invalid(f"reply of {len(reply)} characters exceeds {max_chars}")
    try:
        document: object = json.loads(reply)
    except (ValueError, RecursionError):
        return invalid("reply is not valid JSON")
    if not isinstance(document, dict):
        return invalid(f"reply is a JSON {type(document).__name__}, not an object")
    if "error" in document:
        return _reading_from_agent_error(document["error"])
    answer: object = document.get("return")
    return answer


def _reading_from_agent_error(error: object) -> QueryReading:
    if not isinstance(error, dict):
        return invalid("reply has a malformed 'error'")
    error_class = error.get("class")
    description = error.get("desc")
    if not isinstance(error_class, str):
        return invalid("reply error has no class")
    detail = short(description) if isinstance(description, str) else error_class
    if error_class == _COMMAND_NOT_FOUND_CLASS or (
        isinstance(description, str) and _UNSUPPORTED_DESCRIPTION in description.lower()
    ):
        # QEMU reports unknown and disabled commands with this class, and commands it cannot
        # run on this guest with a generic error saying so.
        return QueryReading(state=AgentState.UNSUPPORTED, detail=detail)
    return QueryReading(state=AgentState.ERROR, detail=f"{short(error_class)}: {detail}")


def invalid(detail: str) -> QueryReading:
    """A reading for an answer that is not what the query asked for (hostile or broken)."""
    return QueryReading(state=AgentState.INVALID, detail=detail)


def short(value: object) -> str:
    """A bounded, printable rendering of guest-supplied text for details and logs."""
    text = repr(value) if not isinstance(value, str) else value.encode("unicode_escape").decode()
    if len(text) > _DETAIL_VALUE_CHARS:
        return text[: _DETAIL_VALUE_CHARS - 3] + "..."
    return text
