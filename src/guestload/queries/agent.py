"""Judging what comes back from a guest agent: its raw replies.

Pure functions: the sources call, this module and the queries judge (the sources judge their
own errors, e.g. :mod:`guestload.sources.libvirt_errors`).
Everything a guest sends is untrusted input, so nothing here raises on bad input: it returns
a reading that says what was wrong.
"""

from __future__ import annotations

import json

from guestload.model import AgentState, QueryReading

_DETAIL_VALUE_CHARS = 120
_COMMAND_NOT_FOUND_CLASS = "CommandNotFound"
#: How QEMU's agent describes a command it has but cannot run on this guest (e.g. Windows
#: for guest-get-cpustats): QERR_UNSUPPORTED.
UNSUPPORTED_DESCRIPTION = "not currently supported"


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
        isinstance(description, str) and UNSUPPORTED_DESCRIPTION in description.lower()
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
