"""The error every web configuration problem raises, naming the field at fault."""

from __future__ import annotations


class WebConfigError(ValueError):
    """The web configuration is unusable; the message starts with the field at fault."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field_name = field_name


def error_reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)
