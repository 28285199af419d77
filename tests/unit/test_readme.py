"""The README's facts are the code's facts: flags, defaults, metrics, Python version."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

from guestload.cli import build_parser
from guestload.model import AgentState

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
GOLDEN = (Path(__file__).parent / "golden" / "metrics.prom").read_text()


def _subcommand_flags() -> set[str]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags: set[str] = set()
    for sub in subparsers.choices.values():
        for action in sub._actions:
            flags.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
    return flags


def _readme_table_flags() -> set[str]:
    section = README.split("### Flags", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return set(re.findall(r"`(--[a-z][a-z0-9.-]*)`", section))


def test_every_flag_is_documented_and_every_documented_flag_exists() -> None:
    assert _readme_table_flags() == _subcommand_flags()


def test_documented_defaults_match_the_parser() -> None:
    serve = build_parser().parse_args(["serve", "--node", "n"])
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `(--[a-z.-]+)` \| `([^`]*)` \|", README, re.MULTILINE)
    }
    assert rows["--libvirt.uri"] == serve.libvirt_uri
    assert rows["--web.telemetry-path"] == serve.telemetry_path
    assert rows["--web.listen-address"] == str(serve.listen_address)
    assert rows["--collector.interval"] == f"{serve.interval:g}s"
    assert rows["--collector.agent-timeout"] == f"{serve.agent_timeout:g}s"
    assert rows["--collector.concurrency"] == str(serve.concurrency)
    assert rows["--web.max-requests"] == str(serve.max_requests)
    assert rows["--identity.default-namespace"] == serve.default_namespace


def test_every_exported_metric_is_documented() -> None:
    exported = set(re.findall(r"^# TYPE (\S+)", GOLDEN, re.MULTILINE))
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", README, re.MULTILINE))
    assert exported <= documented, exported - documented


def test_every_agent_state_is_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \| [a-z]", README, re.MULTILINE))
    assert {s.value for s in AgentState} <= documented


def test_python_requirement_matches_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    assert "Python >= 3.11" in README
