"""Shared helpers for the monitoring bundle's tests: paths, promtool, the rule file, PromQL."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parents[2]
MONITORING = REPOSITORY / "monitoring"
RULE_FILE = MONITORING / "rules" / "guestload.rules.yml"
PROMETHEUSRULE = MONITORING / "kubernetes" / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboards" / "guestload.json"
CONFIG = MONITORING / "config.yml"
PROMTOOL_TESTS = sorted((MONITORING / "tests").glob("*.test.yml"))
RUNBOOKS = REPOSITORY / "docs" / "runbooks"
ALERTS_DOC = REPOSITORY / "docs" / "alerts.md"

EXPORTER_METRICS = frozenset(
    {
        "kubevirt_vmi_guest_load_1m",
        "kubevirt_vmi_guest_load_5m",
        "kubevirt_vmi_guest_load_15m",
        "kubevirt_vmi_vcpu_seconds_total",
        "kubevirt_vmi_vcpu_delay_seconds_total",
        "kubevirt_vmi_vcpu_wait_seconds_total",
        "guestload_guest_cpu_seconds_total",
        "guestload_agent_state",
        "guestload_libvirt_up",
        "guestload_poll_duration_seconds",
        "guestload_last_poll_success_timestamp_seconds",
        "guestload_polls_total",
        "guestload_poll_failures_total",
        "guestload_domains",
        "guestload_agent_calls_total",
        "guestload_build_info",
        "guestload_disk_last_poll_requests_per_second",
        "guestload_disk_last_poll_bytes_per_second",
        "guestload_disk_throttle_iops",
        "guestload_disk_throttle_bytes_per_second",
        # Added by Prometheus for every target.
        "up",
    }
)
"""The exporter's metric contract, plus the target health series Prometheus adds."""

_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
    }
)
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


def debian_tool(name: str, package: str) -> str:
    """The executable *name* from Debian's *package*; fails the test (never skips) when it
    is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: these tests need Debian's {package} package "
            "(scripts/install-system-deps installs it)"
        )
    return path


def promtool() -> str:
    """The promtool executable (Debian's prometheus package)."""
    return debian_tool("promtool", "prometheus")


def jsonnet() -> str:
    """The jsonnet executable (Debian's jsonnet package), which renders monitoring/mixin."""
    return debian_tool("jsonnet", "jsonnet")


def npm_tool(name: str) -> Path:
    """A command from monitoring/package-lock.json, installed with `npm ci` when missing."""
    tool = MONITORING / "node_modules" / ".bin" / name
    if not tool.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"npm is not installed: {name} needs Node.js >= 20 with npm")
        result = run([npm, "ci", "--no-audit", "--no-fund"], cwd=MONITORING)
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}{result.stderr}"
        assert tool.exists(), f"npm ci did not install {name}"
    return tool


def run(
    command: Sequence[str | Path], *, cwd: Path = REPOSITORY
) -> subprocess.CompletedProcess[str]:
    """Run *command* to completion and capture its output as text."""
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def load_yaml(path: Path) -> Any:
    """The YAML document in *path*."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    """Every rule of the shipped rule file, in file order."""
    document = load_yaml(RULE_FILE)
    return [rule for group in document["groups"] for rule in group["rules"]]


def alerting_rules() -> list[dict[str, Any]]:
    """The shipped alerting rules."""
    return [rule for rule in rules() if "alert" in rule]


def recorded_metrics() -> frozenset[str]:
    """The metric names the shipped recording rules produce."""
    return frozenset(rule["record"] for rule in rules() if "record" in rule)


def one_line(expr: str) -> str:
    """*expr* with white space collapsed, for comparing expressions across documents."""
    text = re.sub(r"\s+", " ", expr).strip()
    return re.sub(r"\s+\)", ")", re.sub(r"\(\s+", "(", text))


def check_promql(exprs: Iterable[str], directory: Path) -> subprocess.CompletedProcess[str]:
    """promtool's verdict on *exprs*, each wrapped as a recording rule in one rule file."""
    document = {
        "groups": [
            {
                "name": "queries",
                "rules": [
                    {"record": f"check:query_{index}", "expr": expr}
                    for index, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = directory / "queries.rules.yml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return run([promtool(), "check", "rules", path])


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a lexical scan, no full parser).

    String literals, label matchers, durations and grouping label lists are removed first;
    what is left that is an identifier, not a keyword and not followed by "(" names a metric.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS}
