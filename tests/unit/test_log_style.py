"""Every log line is a constant message plus fields, so ``--log.format json`` can query them.

The rules, checked on the syntax tree of every module under ``src/guestload/``:

* a module's logger is ``log = logging.getLogger(__name__)``, assigned at module level;
* a call on it (``log.debug/info/warning/error/exception/critical``) passes one constant
  message with no %-placeholders and no further positional arguments;
* fields go in ``extra={...}``: a dict literal with snake_case string keys that are neither
  ``LogRecord`` attributes nor keys the formatters write themselves;
* only ``extra``, ``exc_info``, ``stack_info`` and ``stacklevel`` are passed as keywords;
* nothing logs through the root logger (``logging.info(...)``) or a logger made inline.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
from pathlib import Path

import pytest

from guestload.logs import JsonFormatter

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "guestload"


LOGGER_NAME = "log"
LEVEL_METHODS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical"})
ALLOWED_KEYWORDS = frozenset({"extra", "exc_info", "stack_info", "stacklevel"})
SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
PLACEHOLDER = re.compile(r"%(\([^)]*\))?[-#0 +]*(\d+|\*)?(\.(\d+|\*))?[diouxXeEfFgGcrsa%]")


def _formatter_keys() -> frozenset[str]:
    """The keys a JSON line has before any extra field: an extra of that name would clash."""
    try:
        raise ValueError("x")
    except ValueError:
        record = logging.LogRecord("guestload.x", logging.ERROR, "f.py", 1, "m", None, None)
        record.exc_info = sys.exc_info()
    return frozenset(json.loads(JsonFormatter().format(record)))


#: ``LogRecord`` attributes (``logging`` refuses them as extras) and the formatters' own keys.
RESERVED_KEYS = (
    frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
    | {"message", "asctime", "taskName"}
    | _formatter_keys()
)


def _is_get_logger(node: ast.expr) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "getLogger") or (
        isinstance(func, ast.Name) and func.id == "getLogger"
    )


def _is_logging_get_logger_of_name(node: ast.Call) -> bool:
    return (
        isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "logging"
        and node.func.attr == "getLogger"
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], ast.Name)
        and node.args[0].id == "__name__"
    )


def _module_loggers(tree: ast.Module) -> tuple[set[str], list[tuple[int, str]]]:
    """Names bound to ``getLogger(...)`` at module level, and what is wrong with each."""
    names: set[str] = set()
    problems: list[tuple[int, str]] = []
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets, value = [statement.target], statement.value
        else:
            continue
        if not _is_get_logger(value):
            continue
        assert isinstance(value, ast.Call)
        for target in targets:
            if isinstance(target, ast.Name):
                names.add(target.id)
                if target.id != LOGGER_NAME:
                    problems.append((statement.lineno, f"module logger named {target.id!r}"))
        if not _is_logging_get_logger_of_name(value):
            problems.append((statement.lineno, "logger not made by logging.getLogger(__name__)"))
    return names, problems


def _extra_problems(extra: ast.expr) -> list[str]:
    if not isinstance(extra, ast.Dict):
        return ["extra is not a dict literal"]
    problems = []
    for key in extra.keys:
        if key is None:
            problems.append("extra spreads a mapping (**)")
        elif not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            problems.append("extra key is not a constant string")
        elif not SNAKE_CASE.fullmatch(key.value):
            problems.append(f"extra key {key.value!r} is not snake_case")
        elif key.value in RESERVED_KEYS:
            problems.append(f"extra key {key.value!r} clashes with a LogRecord or formatter key")
    return problems


def _call_problems(call: ast.Call) -> list[str]:
    problems = []
    if not call.args:
        problems.append("no positional message")
    else:
        message = call.args[0]
        if not (isinstance(message, ast.Constant) and isinstance(message.value, str)):
            problems.append("message is not a constant string")
        elif PLACEHOLDER.search(message.value):
            problems.append(f"message has a %-placeholder: {message.value!r}")
        if len(call.args) > 1:
            problems.append("positional arguments after the message")
    for keyword in call.keywords:
        if keyword.arg not in ALLOWED_KEYWORDS:
            problems.append(f"keyword {keyword.arg or '**'!r} is not one a log call takes")
        elif keyword.arg == "extra":
            problems.extend(_extra_problems(keyword.value))
    return problems


def violations(source: str) -> list[str]:
    """What breaks the logging rules in one module's source, as ``line: problem``."""
    tree = ast.parse(source)
    loggers, found = _module_loggers(tree)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in LEVEL_METHODS:
            continue
        receiver = node.func.value
        if isinstance(receiver, ast.Name) and receiver.id == "logging":
            found.append((node.lineno, "logs through the root logger"))
        elif _is_get_logger(receiver):
            found.append((node.lineno, "logs through a logger made inline"))
        elif isinstance(receiver, ast.Name) and receiver.id in loggers:
            found.extend((node.lineno, problem) for problem in _call_problems(node))
    return [f"{line}: {problem}" for line, problem in sorted(found)]


def _package_violations() -> dict[str, list[str]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        problems = violations(path.read_text())
        if problems:
            found[path.relative_to(PACKAGE).as_posix()] = problems
    return found


def test_the_package_logs_constant_messages_with_fields() -> None:
    assert _package_violations() == {}


def test_the_walk_reaches_the_modules_that_log() -> None:
    modules = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    assert {"sources/libvirt.py", "polling/poller.py", "web/server.py", "cli/main.py"} <= modules


GOOD = """
import logging
log = logging.getLogger(__name__)
log.info("connected", extra={"uri": uri, "daemon_version": v})
log.exception("listener failed", exc_info=True)
log.info("the worker pool is at 100%")
"""


def test_a_conforming_module_passes() -> None:
    assert violations(GOOD) == []


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("logger = logging.getLogger(__name__)", "module logger named 'logger'"),
        ('log = logging.getLogger("guestload")', "logger not made by logging.getLogger"),
        ("log = getLogger(__name__)", "logger not made by logging.getLogger"),
        ('log = logging.getLogger(__name__)\nlog.info("uri=%s", uri)', "%-placeholder"),
        ('log = logging.getLogger(__name__)\nlog.info("a", uri)', "positional arguments"),
        ('log = logging.getLogger(__name__)\nlog.info(f"uri={uri}")', "not a constant string"),
        ('log = logging.getLogger(__name__)\nlog.info("a " + uri)', "not a constant string"),
        ("log = logging.getLogger(__name__)\nlog.warning()", "no positional message"),
        ('log = logging.getLogger(__name__)\nlog.info("a", extra=e)', "not a dict literal"),
        ('log = logging.getLogger(__name__)\nlog.info("a", extra={**e})', "spreads a mapping"),
        ('log = logging.getLogger(__name__)\nlog.info("a", extra={k: 1})', "not a constant"),
        ('log = logging.getLogger(__name__)\nlog.info("a", extra={"tookMs": 1})', "snake_case"),
        ('log = logging.getLogger(__name__)\nlog.info("a", extra={"name": 1})', "clashes"),
        ('log = logging.getLogger(__name__)\nlog.info("a", extra={"level": 1})', "clashes"),
        ('log = logging.getLogger(__name__)\nlog.info("a", uri=1)', "keyword 'uri'"),
        ('logging.info("a")', "root logger"),
        ('logging.getLogger("x").info("a")', "logger made inline"),
    ],
)
def test_each_rule_is_enforced(source: str, problem: str) -> None:
    found = violations(source)
    assert any(problem in line for line in found), found
