"""libvirt's errors from a guest-agent call, judged as agent states.

Pure, no libvirt import: the error codes are libvirt's stable ``virErrorNumber`` values, so the
simulated source raises the same errors the libvirt source meets, and both judge them here.
"""

from __future__ import annotations

from collections.abc import Mapping

from guestload.model import AgentState
from guestload.queries.agent import UNSUPPORTED_DESCRIPTION

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
            or UNSUPPORTED_DESCRIPTION in text
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
