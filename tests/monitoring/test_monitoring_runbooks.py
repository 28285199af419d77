"""Every alert has a runbook in kubevirt/monitoring's shape; runbooks are valid and linted."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.monitoring.monitoring_bundle import (
    ALERTS_DOC,
    REPOSITORY,
    RUNBOOKS,
    alerting_rules,
    check_promql,
    npm_tool,
    one_line,
    rules,
    run,
)

SECTIONS = ["Meaning", "Impact", "Diagnosis", "Mitigation"]
GUEST_ALERTS = {
    "GuestVCPUQueueHighWarning",
    "GuestVCPUQueueHighCritical",
    "GuestVCPUSaturation",
    "GuestVCPUHostContention",
    "GuestIOStall",
}
DELAY_RATIO = "namespace_name_node:kubevirt_vmi_vcpu_delay:ratio_rate10m"
SHELL_VARIABLES = {"$NAMESPACE": "shop", "$NAME": "db", "$NODE": "node-a"}


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^ *```{language}\n(.*?)^ *```$", text, flags=re.MULTILINE | re.DOTALL)


def _runbook(rule: dict[str, Any]) -> str:
    name: str = rule["alert"]
    return (RUNBOOKS / f"{name}.md").read_text(encoding="utf-8")


ALERTS = alerting_rules()
ALERT_IDS = [rule["alert"] for rule in ALERTS]


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_runbook_has_the_alert_name_as_title_and_the_four_sections(rule: dict[str, Any]) -> None:
    text = _runbook(rule)
    assert text.splitlines()[0] == f"# {rule['alert']}"
    assert re.findall(r"^## (.+)$", text, flags=re.MULTILINE) == SECTIONS


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_runbook_url_resolves_to_the_runbook(rule: dict[str, Any]) -> None:
    url = rule["annotations"]["runbook_url"]
    match = re.search(r"/(docs/runbooks/[^/]+\.md)$", url)
    assert match, f"{url} does not point into docs/runbooks/"
    assert (REPOSITORY / match[1]).is_file()
    assert Path(match[1]).stem == rule["alert"]


def test_no_runbook_without_an_alert() -> None:
    assert {path.stem for path in RUNBOOKS.glob("*.md")} == set(ALERT_IDS)


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_meaning_states_the_real_expression_and_for(rule: dict[str, Any]) -> None:
    meaning = _sections(_runbook(rule))["Meaning"]
    blocks = [one_line(block) for block in _code_blocks(meaning, "promql")]
    assert one_line(rule["expr"]) in blocks
    shipped = {one_line(other["expr"]) for other in rules()}
    assert set(blocks) <= shipped, "a Meaning block differs from every shipped expression"
    for_ = rule.get("for")
    assert (f"`for: {for_}`" if for_ else "without a `for`") in meaning


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_diagnosis_has_runnable_commands_and_queries(rule: dict[str, Any]) -> None:
    diagnosis = _sections(_runbook(rule))["Diagnosis"]
    console = "\n".join(_code_blocks(diagnosis, "console"))
    assert re.search(r"^ *\$ virsh ", console, flags=re.MULTILINE)
    assert re.search(r"^ *\$ (kubectl|virtctl) ", console, flags=re.MULTILINE)
    assert "guestload probe" in console
    assert _code_blocks(diagnosis, "promql")
    if rule["alert"] in GUEST_ALERTS:
        assert DELAY_RATIO in diagnosis, "no way to tell guest from host contention"
        assert "contention" in diagnosis


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_impact_matches_the_severity(rule: dict[str, Any]) -> None:
    impact = _sections(_runbook(rule))["Impact"]
    assert impact.strip().startswith(rule["labels"]["severity"].capitalize() + ":")


def test_every_promql_in_the_runbooks_is_valid(tmp_path: Path) -> None:
    """Meaning blocks hold one expression; Diagnosis blocks hold one query per line."""
    queries = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        sections = _sections(path.read_text(encoding="utf-8"))
        queries += _code_blocks(sections["Meaning"], "promql")
        for block in _code_blocks(sections["Diagnosis"], "promql"):
            queries += [line.strip() for line in block.splitlines() if line.strip()]
    for variable, value in SHELL_VARIABLES.items():
        queries = [query.replace(variable, value) for query in queries]
    assert len(queries) > 20
    result = check_promql(queries, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_document_passes_markdownlint() -> None:
    documents = [*sorted((REPOSITORY / "docs").rglob("*.md")), REPOSITORY / "README.md"]
    assert ALERTS_DOC in documents
    result = run(
        [
            npm_tool("markdownlint-cli2"),
            "--config",
            "monitoring/.markdownlint-cli2.jsonc",
            *(str(d.relative_to(REPOSITORY)) for d in documents),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Linting: {len(documents)} file(s)" in result.stdout + result.stderr
