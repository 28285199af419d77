"""docs/metrics.md and docs/cli.md are the code's own output; ``--update-golden`` rewrites them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from guestload.cli.docs import HELP_COLUMNS, cli_markdown, metrics_markdown
from guestload.cli.flags import build_parser
from guestload.cli.main import main

DOCS = Path(__file__).resolve().parents[2] / "docs"
GOLDEN = Path(__file__).parent / "golden" / "metrics.prom"


def _check(path: Path, generated: str, command: str, request: pytest.FixtureRequest) -> None:
    if request.config.getoption("--update-golden"):
        path.write_text(generated)
    assert path.read_text() == generated, f"{path} is stale: run {command} (or --update-golden)"


def test_metrics_doc_matches_the_code(request: pytest.FixtureRequest) -> None:
    _check(
        DOCS / "metrics.md",
        metrics_markdown(),
        "python -m guestload.cli.docs > docs/metrics.md",
        request,
    )


def test_metrics_doc_lists_every_exported_family() -> None:
    exported = set(re.findall(r"^# TYPE (\S+)", GOLDEN.read_text(), re.MULTILINE))
    exported = {name for name in exported if not name.startswith(("process_", "python_"))}
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", metrics_markdown(), re.MULTILINE))
    assert exported <= documented, exported - documented


def test_cli_doc_matches_the_real_help(request: pytest.FixtureRequest) -> None:
    _check(
        DOCS / "cli.md",
        cli_markdown(build_parser()),
        "python -m guestload.cli.docs cli > docs/cli.md",
        request,
    )


@pytest.mark.parametrize("command", [[], ["serve"], ["probe"], ["bundle"]])
def test_cli_doc_holds_what_the_command_prints(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``guestload`` and ``python -m guestload`` run ``main`` with these arguments."""
    monkeypatch.setenv("COLUMNS", str(HELP_COLUMNS))
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.rstrip("\n") in (DOCS / "cli.md").read_text()
