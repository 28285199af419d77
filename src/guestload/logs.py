"""Structured logging: logfmt (default) or JSON lines on stderr."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Final

LEVELS: Final = ("debug", "info", "warn", "error")
FORMATS: Final = ("logfmt", "json")

_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
        "level": "warn" if record.levelname == "WARNING" else record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            fields[key] = value
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


#: Control characters (C0, DEL, C1) written as escapes: a request line or a guest's answer
#: must not move a terminal's cursor, end a log line or hide in it as a NUL.
_CONTROL_ESCAPES: Final = {
    code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))
} | {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"}


def _logfmt_value(value: object) -> str:
    text = str(value)
    escaped = text.translate(_CONTROL_ESCAPES)
    if text and escaped == text and " " not in text and "=" not in text:
        return text
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """``ts=… level=info logger=… msg="…" key=value``; extra= fields become keys."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line, ASCII only, with every control character escaped."""

    def format(self, record: logging.LogRecord) -> str:
        # json.dumps escapes C0 and, as non-ASCII, C1 characters, but leaves DEL raw; outside
        # a string no DEL can occur, so each one written is inside a string and may be escaped.
        return json.dumps(_fields(record), default=str).replace("\x7f", "\\u007f")


def configure_logging(*, level: str, fmt: str) -> None:
    """Send the ``guestload`` loggers to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger("guestload")
    root.handlers[:] = [handler]
    root.setLevel("WARNING" if level == "warn" else level.upper())
    root.propagate = False
