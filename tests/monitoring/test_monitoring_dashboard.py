"""The Grafana dashboard: stable identity, variables, panels, and queries promtool accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.monitoring.monitoring_bundle import (
    CONFIG,
    DASHBOARD,
    EXPORTER_METRICS,
    alerting_rules,
    check_promql,
    load_yaml,
    metric_names,
    recorded_metrics,
)

TEMPLATE_VALUES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$namespace": ".*",
    "$name": ".*",
    "$node": ".*",
}


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def _panels() -> list[dict[str, Any]]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def _variable_selectors() -> list[str]:
    """The series selectors inside the query variables' `label_values(selector, label)`."""
    selectors = []
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *\w+\)", variable["query"]["query"])
            assert match, variable["query"]
            selectors.append(match[1])
    return selectors


def _queries() -> list[str]:
    """Every PromQL query of the dashboard with Grafana's variables replaced by values."""
    queries = [target["expr"] for panel in _panels() for target in panel["targets"]]
    queries += _variable_selectors()
    substituted = []
    for query in queries:
        text = query
        for variable, value in TEMPLATE_VALUES.items():
            text = text.replace(variable, value)
        assert "$" not in text, f"unknown variable left in {query}"
        substituted.append(text)
    return substituted


def test_dashboard_has_a_stable_identity() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "guestload-vmi-load"
    assert "guestload" in dashboard["tags"]
    assert dashboard["title"]


def test_dashboard_has_datasource_namespace_name_node_variables() -> None:
    variables = {variable["name"]: variable for variable in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "name", "node"):
        assert variables[name]["type"] == "query"
        assert variables[name]["includeAll"]
        assert variables[name]["multi"]


def test_every_panel_queries_the_datasource_variable() -> None:
    for panel in _panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_no_query_hard_codes_a_namespace_name_or_node() -> None:
    for query in [target["expr"] for panel in _panels() for target in panel["targets"]]:
        for label in ("namespace", "name", "node"):
            for matcher in re.findall(rf'\b{label}\s*(?:=|!=|=~|!~)\s*"([^"]*)"', query):
                assert matcher == f"${label}", f"{label} fixed to {matcher!r} in {query}"


def test_guest_panels_filter_by_the_vm_variables() -> None:
    guest_queries = [
        target["expr"]
        for panel in _panels()
        for target in panel["targets"]
        if "kubevirt_vmi" in target["expr"] or "guestload_agent_state" in target["expr"]
    ]
    assert guest_queries
    for query in guest_queries:
        assert 'namespace=~"$namespace", name=~"$name", node=~"$node"' in query, query


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    queries = _queries()
    assert len(queries) >= 15
    result = check_promql(queries, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_query_uses_only_exported_or_recorded_metrics() -> None:
    known = EXPORTER_METRICS | recorded_metrics()
    for query in _queries():
        used = metric_names(query)
        assert used, f"no metric in {query}"
        assert used <= known, f"unknown metrics {used - known} in {query}"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'clamp_min(max by (namespace, name) (kubevirt_vmi_guest_load_1m{job="x"}) '
            "- on (namespace, name) kubevirt_vmi_vcpu_count, 0)",
            {"kubevirt_vmi_guest_load_1m", "kubevirt_vmi_vcpu_count"},
        ),
        (
            'sum by (state) (rate(guestload_agent_calls_total{state!="ok"}[5m] offset 1h))'
            " > bool 1e3",
            {"guestload_agent_calls_total"},
        ),
        (
            "time() - guestload_last_poll_success_timestamp_seconds",
            {"guestload_last_poll_success_timestamp_seconds"},
        ),
        ("topk(10, a:b:c)", {"a:b:c"}),
    ],
)
def test_metric_name_scan_finds_exactly_the_metrics(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def _panel_with(fragment: str) -> dict[str, Any]:
    for panel in _panels():
        if any(fragment in target["expr"] for target in panel["targets"]):
            return panel
    raise AssertionError(f"no panel queries {fragment}")


def test_load_panel_plots_all_three_averages_against_the_vcpu_count() -> None:
    panel = _panel_with("kubevirt_vmi_guest_load_1m")
    exprs = " ".join(target["expr"] for target in panel["targets"])
    for metric in ("load_1m", "load_5m", "load_15m", "kubevirt_vmi_vcpu_count"):
        assert metric in exprs


def test_queue_panel_draws_the_alert_thresholds() -> None:
    panel = _panel_with("kubevirt_vmi_guest_vcpu_queue{")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    drawn = {step["value"] for step in steps if step["value"] is not None}
    alerts = {rule["alert"]: rule["expr"] for rule in alerting_rules()}
    for name in ("GuestVCPUQueueHighWarning", "GuestVCPUQueueHighCritical"):
        match = re.match(r"kubevirt_vmi_guest_vcpu_queue > ([\d.]+)\n", alerts[name])
        assert match, alerts[name]
        assert float(match[1]) in drawn
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"


def test_dashboard_shows_load_causes_agent_states_and_exporter_health() -> None:
    for fragment in (
        "namespace_name_node:kubevirt_vmi_guest_load_5m_per_vcpu:ratio",
        "namespace_name_node:kubevirt_vmi_vcpu_delay:ratio_rate10m",
        "namespace_name_node:vmi_cpu_busy:ratio_rate10m{",
        "namespace_name_node:guestload_guest_cpu_iowait:ratio_rate10m{",
        "namespace_name_node:vmi_cpu_contention:ratio_rate10m{",
        "count by (cause) (namespace_name_node:guestload_pressure_cause:info{",
        "topk(10, kubevirt_vmi_guest_vcpu_queue",
        "guestload_agent_state",
        'query="load", state!="ok"',
        'query="cpustats", state!="ok"',
        "count by (query, state) (guestload_agent_state",
        "sum by (query, state) (rate(guestload_agent_calls_total",
        "up{",
        "guestload_libvirt_up",
        "guestload_poll_duration_seconds",
        "guestload_last_poll_success_timestamp_seconds",
    ):
        _panel_with(fragment)


@pytest.mark.parametrize(
    ("record", "setting"),
    [
        ("namespace_name_node:vmi_cpu_busy:ratio_rate10m{", "busy_share"),
        ("namespace_name_node:guestload_guest_cpu_iowait:ratio_rate10m{", "iowait_share"),
        ("namespace_name_node:vmi_cpu_contention:ratio_rate10m{", "contention_share"),
    ],
)
def test_breakdown_panels_draw_the_cause_thresholds_as_shares(record: str, setting: str) -> None:
    panel = _panel_with(record)
    defaults = panel["fieldConfig"]["defaults"]
    drawn = {step["value"] for step in defaults["thresholds"]["steps"] if step["value"]}
    assert drawn == {float(load_yaml(CONFIG)["causes"][setting]["value"])}
    assert defaults["unit"] == "percentunit"
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "dashed"


def test_busy_share_panel_names_its_source_in_the_legend() -> None:
    panel = _panel_with("namespace_name_node:vmi_cpu_busy:ratio_rate10m{")
    assert "{{source}}" in panel["targets"][0]["legendFormat"]
