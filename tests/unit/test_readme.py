"""The README's facts are the code's facts: flags, defaults, metrics, Python version."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

from guestload.cli.flags import build_parser, shown_default
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
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = {o: a for a in subparsers.choices["serve"]._actions for o in a.option_strings}
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `(--[a-z.-]+)` \| `([^`]*)` \|", README, re.MULTILINE)
    }
    assert {"--libvirt.uri", "--collector.interval", "--collector.agent-backoff-max"} <= set(rows)
    for flag, documented in rows.items():
        action = serve[flag]
        assert documented == shown_default(action.dest, action.default), flag


def test_every_exported_metric_is_documented() -> None:
    exported = set(re.findall(r"^# TYPE (\S+)", GOLDEN, re.MULTILINE))
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", README, re.MULTILINE))
    assert exported <= documented, exported - documented


def test_every_agent_state_is_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \| [a-z]", README, re.MULTILINE))
    assert {s.value for s in AgentState} <= documented


def test_python_requirement_is_the_same_everywhere() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    version = pyproject["project"]["requires-python"].removeprefix(">=")
    assert f"Python >= {version}" in README
    assert pyproject["tool"]["mypy"]["python_version"] == version
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + version.replace(".", "")


def _layout_rows() -> dict[str, str]:
    section = README.split("Layout", 1)[1]
    return {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `([^`]+)` \| (.*) \|$", section, re.MULTILINE)
    }


def test_the_readme_layout_names_every_module_of_the_package() -> None:
    rows = _layout_rows()
    package = ROOT / "src" / "guestload"
    for path in sorted(package.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        relative = path.relative_to(ROOT).as_posix()
        if path.parent == package:
            assert relative in rows, f"{relative} is missing from the README's layout"
        else:
            folder = path.parent.relative_to(ROOT).as_posix() + "/"
            assert folder in rows, f"{folder} is missing from the README's layout"
            assert f"`{path.stem}`" in rows[folder], (
                f"{relative} is not named in the README's row for {folder}"
            )
    for name in rows:
        if name.startswith("src/guestload/"):
            assert (ROOT / name).exists(), f"the README's layout names {name}, which does not exist"
