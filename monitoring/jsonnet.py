"""Jsonnet source text from a JSON-like tree, with jsonnet expressions where values vary."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEYWORDS = frozenset(
    {
        "assert",
        "else",
        "error",
        "false",
        "for",
        "function",
        "if",
        "import",
        "importstr",
        "importbin",
        "in",
        "local",
        "null",
        "self",
        "super",
        "tailstrict",
        "then",
        "true",
    }
)
INDENT = "  "


@dataclass(frozen=True, slots=True)
class Code:
    """A jsonnet expression written as it is (a reference such as ``c.dashboardTags``); as a
    mapping key, a computed field name such as ``[if c.x != '0s' then 'for']``."""

    text: str


@dataclass(frozen=True, slots=True)
class Template:
    """A string with ``%(name)s`` placeholders (and ``%%`` for a percent sign) for the fields
    of the object named *values* in the jsonnet source.

    It is rendered as concatenations, line by line: jsonnet's ``%`` operator (std.format)
    would be the shorter text, but takes seconds on the bundle's long descriptions.
    """

    text: str
    values: str = "v"


Node: TypeAlias = (
    Mapping[str, "Node"]
    | Mapping[str | Code, "Node"]
    | Sequence["Node"]
    | str
    | int
    | float
    | bool
    | Code
    | Template
    | None
)
"""What :func:`render` takes: JSON values, :class:`Code` and :class:`Template`."""


def render(node: Node, depth: int = 0) -> str:
    """*node* as a jsonnet expression, nested blocks indented from *depth* on."""
    if isinstance(node, Code):
        return node.text
    if isinstance(node, Template):
        return _template(node, depth)
    if node is None or isinstance(node, bool | int | float):
        return json.dumps(node)
    if isinstance(node, str):
        return _string(node, depth)
    if isinstance(node, Mapping):
        return _object(node, depth)
    return _array(node, depth)


def _object(node: Mapping[str, Node] | Mapping[str | Code, Node], depth: int) -> str:
    if not node:
        return "{}"
    inner = INDENT * (depth + 1)
    fields = [f"{inner}{_key(key)}: {render(value, depth + 1)},\n" for key, value in node.items()]
    return "{\n" + "".join(fields) + INDENT * depth + "}"


def _array(node: Sequence[Node], depth: int) -> str:
    if not node:
        return "[]"
    inner = INDENT * (depth + 1)
    items = [f"{inner}{render(item, depth + 1)},\n" for item in node]
    return "[\n" + "".join(items) + INDENT * depth + "]"


def _key(key: str | Code) -> str:
    if isinstance(key, Code):
        return key.text
    if _IDENTIFIER.match(key) and key not in _KEYWORDS:
        return key
    return json.dumps(key, ensure_ascii=False)


_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s")


def _template(template: Template, depth: int) -> str:
    """*template* as one concatenation per line, the lines joined with newlines."""
    lines = []
    for line in template.text.split("\n"):
        parts: list[str] = []
        literal = ""
        position = 0
        for found in _PLACEHOLDER.finditer(line):
            literal += line[position : found.start()]
            position = found.end()
            if found.group(1) is None:
                literal += "%"
                continue
            if literal:
                parts.append(_string(literal, depth))
            literal = ""
            parts.append(f"{template.values}.{found.group(1)}")
        literal += line[position:]
        if literal or not parts:
            parts.append(_string(literal, depth))
        lines.append(" + ".join(parts))
    if len(lines) == 1:
        return lines[0]
    inner = INDENT * (depth + 1)
    joined = "".join(f"{inner}{line},\n" for line in lines)
    return f"std.join('\\n', [\n{joined}{INDENT * depth}])"


def _string(text: str, depth: int) -> str:
    """A multi-line string as a text block (``|||``), any other as a JSON string literal."""
    if not _fits_text_block(text):
        if text.isprintable() and not {"'", "\\"} & set(text):
            return f"'{text}'"
        return json.dumps(text, ensure_ascii=False)
    inner = INDENT * (depth + 1)
    body = text if text.endswith("\n") else text + "\n"
    lines = "".join(f"{inner}{line}\n" if line else "\n" for line in body[:-1].split("\n"))
    block = f"|||\n{lines}{INDENT * depth}|||"
    # Text blocks end with a newline; strings that do not are chomped.
    return block if text.endswith("\n") else f"std.rstripChars({block}, '\\n')"


def _fits_text_block(text: str) -> bool:
    """Whether a text block reproduces *text*: several lines, the first not indented (the
    block's indentation is the first line's), no line ending in white space or ``|||``."""
    if "\n" not in text.rstrip("\n") or text.endswith("\n\n") or "\r" in text:
        return False
    lines = text.rstrip("\n").split("\n")
    if lines[0][:1] in {"", " ", "\t"}:
        return False
    return not any(line != line.rstrip() or line.lstrip().startswith("|||") for line in lines)
