"""The monitoring mixin, rendered with jsonnet: the shipped bundle at the default `_config`,
and exactly the overridden places changed otherwise.

The expected documents come from the Python builders (monitoring/rules.py, dashboard.py,
kubevirt.py) run on settings changed the same way as the `_config`.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring.dashboard import render_dashboard
from monitoring.jsonnet import Node, Template
from monitoring.jsonnet import render as render_jsonnet
from monitoring.mixin import jsonnet_number
from monitoring.rules import RuleGroup, build_groups
from monitoring.settings import Reasoned, Settings, load_settings

from monitoring.kubevirt import build_kubevirt_groups, render_kubevirt_dashboard
from tests.monitoring.grafana_schema import type_check
from tests.monitoring.monitoring_bundle import (
    CONFIG,
    DASHBOARD,
    PROMTOOL_TESTS,
    REPOSITORY,
    RULE_FILE,
    jsonnet,
    load_yaml,
    promtool,
    run,
)

MIXIN = REPOSITORY / "monitoring" / "mixin"
KUBEVIRT_DOC = REPOSITORY / "docs" / "operators" / "kubevirt.md"
VARIANTS = {
    "plain": (RULE_FILE, DASHBOARD),
    "kubevirt": (
        RULE_FILE.with_name("guestload-kubevirt.rules.yml"),
        DASHBOARD.with_name("guestload-kubevirt.json"),
    ),
}
"""Each variant: the rule file and the dashboard it must render at the default _config."""


def render(config: str = "", *, variant: str = "plain") -> dict[str, Any]:
    """The mixin's rule groups (recording first, as in the rule files) and dashboards, with
    *config* (jsonnet fields) merged into its _config."""
    return copy.deepcopy(_render(config, variant))


@functools.cache
def _render(config: str, variant: str) -> dict[str, Any]:
    kubevirt = "true" if variant == "kubevirt" else "false"
    program = (
        "local mixin = (import 'mixin.libsonnet') + "
        f"{{ _config+:: {{ kubevirtVariant: {kubevirt}, {config} }} }};\n"
        "{\n"
        "  groups: mixin.prometheusRules.groups + mixin.prometheusAlerts.groups,\n"
        "  dashboards: mixin.grafanaDashboards,\n"
        "}\n"
    )
    result = run([jsonnet(), "-J", MIXIN, "-e", program])
    assert result.returncode == 0, result.stderr
    rendered: dict[str, Any] = json.loads(result.stdout)
    return rendered


def expected(settings: Settings, *, variant: str = "plain") -> dict[str, Any]:
    """What the Python builders make of *settings*, in the shape :func:`render` returns."""
    groups: tuple[RuleGroup, ...]
    if variant == "kubevirt":
        groups = build_kubevirt_groups(settings)
        dashboard = render_kubevirt_dashboard(settings)
    else:
        groups = build_groups(settings)
        dashboard = render_dashboard(settings)
    return {
        "groups": [group.document() for group in groups],
        "dashboards": {VARIANTS[variant][1].name: json.loads(dashboard)},
    }


def _rules(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each rule by its name, labels and annotations as keys of their own (``labels.x``)."""
    rules = {}
    for group in document["groups"]:
        for rule in group["rules"]:
            flat = {key: value for key, value in rule.items() if not isinstance(value, dict)}
            for key in ("labels", "annotations"):
                flat |= {f"{key}.{name}": text for name, text in rule.get(key, {}).items()}
            rules[rule.get("alert") or rule["record"]] = flat
    return rules


def _changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, set[str]]:
    """The rules that differ, each with the keys that differ."""
    old, new = _rules(before), _rules(after)
    assert old.keys() == new.keys()
    return {
        name: {
            key
            for key in old[name].keys() | new[name].keys()
            if old[name].get(key) != new[name].get(key)
        }
        for name in old
        if old[name] != new[name]
    }


def _rule_file(tmp_path: Path, document: dict[str, Any], name: str) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"groups": document["groups"]}), encoding="utf-8")
    return path


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_default_config_renders_the_shipped_rules_rule_for_rule(variant: str) -> None:
    rule_file, _ = VARIANTS[variant]
    rendered = render(variant=variant)["groups"]
    shipped = load_yaml(rule_file)["groups"]
    assert [group["name"] for group in rendered] == [group["name"] for group in shipped]
    for ours, theirs in zip(rendered, shipped, strict=True):
        assert len(ours["rules"]) == len(theirs["rules"])
        for rule, want in zip(ours["rules"], theirs["rules"], strict=True):
            assert rule == want


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_default_config_renders_the_shipped_dashboard(variant: str) -> None:
    _, dashboard = VARIANTS[variant]
    rendered = render(variant=variant)["dashboards"]
    assert rendered == {dashboard.name: json.loads(dashboard.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_variant_passes_promtool_check(tmp_path: Path, variant: str) -> None:
    rendered = render(variant=variant)
    path = _rule_file(tmp_path, rendered, f"{variant}.rules.yml")
    result = run([promtool(), "check", "rules", path])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules(rendered))} rules found" in result.stdout


def test_promtool_unit_tests_pass_against_the_rendered_rules(tmp_path: Path) -> None:
    rendered = _rule_file(tmp_path, render(), "rendered.rules.yml")
    copies = []
    for test_file in PROMTOOL_TESTS:
        document = load_yaml(test_file)
        assert [(test_file.parent / name).resolve() for name in document["rule_files"]] == [
            RULE_FILE.resolve()
        ]
        document["rule_files"] = [str(rendered)]
        copies.append(tmp_path / test_file.name)
        copies[-1].write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    result = run([promtool(), "test", "rules", *copies])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(PROMTOOL_TESTS), result.stdout


def _settings() -> Settings:
    return load_settings(CONFIG)


def test_a_selector_override_changes_exactly_the_exporter_alert_expressions() -> None:
    selector = 'job="kubevirt-guestload", namespace="monitoring"'
    settings = replace(_settings(), exporter_selector=selector)
    before = render()
    after = render(f"guestloadSelector: {json.dumps(selector)}")
    assert after == expected(settings)
    assert _changed(before, after) == {
        "GuestloadExporterDown": {"expr"},
        "GuestloadLibvirtDown": {"expr"},
        "GuestloadLibvirtSocketDown": {"expr"},
        "GuestLoadUnavailable": {"expr"},
    }
    assert f"up{{{selector}}} == 0" == _rules(after)["GuestloadExporterDown"]["expr"]


def _with_threshold(settings: Settings, alert: str, key: str, value: str) -> Settings:
    configured = settings.alert(alert)
    old = configured.thresholds[key]
    thresholds = {**configured.thresholds, key: Reasoned(value=value, why=old.why)}
    alerts = {**settings.alerts, alert: replace(configured, thresholds=thresholds)}
    return replace(settings, alerts=alerts)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("value", ["3", "'3'", "2.5"], ids=["number", "text", "fraction"])
def test_a_threshold_override_changes_exactly_its_alert(variant: str, value: str) -> None:
    literal = value.strip("'")
    settings = _with_threshold(_settings(), "GuestVCPUSaturation", "load_per_vcpu", literal)
    before = render(variant=variant)
    after = render(f"guestVCPUSaturationLoadPerVcpu: {value}", variant=variant)
    assert after == expected(settings, variant=variant)
    assert _changed(before, after) == {
        "GuestVCPUSaturation": {"expr", "annotations.summary", "annotations.description"}
    }
    assert f"> {literal}\n" in _rules(after)["GuestVCPUSaturation"]["expr"]
    assert before["dashboards"] != after["dashboards"]  # its threshold line moved


def test_the_queue_threshold_moves_the_cause_rule_with_the_warning_alert() -> None:
    settings = _with_threshold(_settings(), "GuestVCPUQueueHighWarning", "queue", "12")
    before = render()
    after = render("guestVCPUQueueHighWarningQueue: 12")
    assert after == expected(settings)
    assert _changed(before, after) == {
        "namespace_name_node:guestload_pressure_cause:info": {"expr"},
        "GuestVCPUQueueHighWarning": {"expr", "annotations.summary", "annotations.description"},
    }


def test_a_zero_for_is_left_out_and_another_is_written() -> None:
    rules = _rules(render("guestVCPUQueueHighWarningFor: '2m', guestIOStallFor: '0s'"))
    assert rules["GuestVCPUQueueHighWarning"]["for"] == "2m"
    assert "for" not in rules["GuestIOStall"]
    assert "for" not in rules["GuestVCPUQueueHighCritical"]


def test_the_runbook_pattern_names_each_alert() -> None:
    rules = _rules(render("runbookURLPattern: 'https://wiki.example.org/guestload/%s'"))
    alerts = {name: rule for name, rule in rules.items() if "alert" in rule}
    assert alerts
    for name, rule in alerts.items():
        assert rule["annotations.runbook_url"] == f"https://wiki.example.org/guestload/{name}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_dashboards_pass_the_grafana_schema_check(tmp_path: Path, variant: str) -> None:
    config = "dashboardTags: ['vms'], datasourceFilterRegex: 'prom-.*'"
    (dashboard,) = render(config, variant=variant)["dashboards"].values()
    assert dashboard["tags"] == ["vms"]
    assert [v["regex"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"] == [
        "prom-.*"
    ]
    status, output = type_check(dashboard, tmp_path)
    assert status == 0, output


def _documented_command() -> list[str]:
    text = KUBEVIRT_DOC.read_text(encoding="utf-8")
    found = re.search(r"^\$ (jsonnet -J .*prometheusAlerts.*)$", text, re.MULTILINE)
    assert found, f"{KUBEVIRT_DOC.name} shows no plain jsonnet command"
    return shlex.split(found.group(1))


def test_the_documented_jsonnet_command_prints_the_shipped_alerts() -> None:
    command = _documented_command()
    assert command[0] == "jsonnet"
    result = run([jsonnet(), *command[1:]])
    assert result.returncode == 0, result.stderr
    shipped = [
        group for group in load_yaml(RULE_FILE)["groups"] if group["name"].endswith("alerts")
    ]
    assert json.loads(result.stdout) == {"groups": shipped}


ADD_MIXIN = """// A stand-in for kube-prometheus' addMixin (lib/mixin.libsonnet): the contract the
// documented lines rely on, a PrometheusRule of the mixin's groups and its dashboards.
function(params) {
  local mixin = params.mixin,
  prometheusRules: {
    apiVersion: 'monitoring.coreos.com/v1',
    kind: 'PrometheusRule',
    metadata: { name: params.name },
    spec: { groups: mixin.prometheusAlerts.groups + mixin.prometheusRules.groups },
  },
  grafanaDashboards: { [params.dashboardFolder]: mixin.grafanaDashboards },
}
"""


def test_the_documented_add_mixin_lines_build_the_kubevirt_variant(tmp_path: Path) -> None:
    found = re.search(
        r"^```jsonnet\n(.*?)^```$", KUBEVIRT_DOC.read_text(encoding="utf-8"), re.M | re.S
    )
    assert found, f"{KUBEVIRT_DOC.name} shows no addMixin lines"
    vendor = tmp_path / "vendor"
    (vendor / "kube-prometheus" / "lib").mkdir(parents=True)
    (vendor / "kube-prometheus" / "lib" / "mixin.libsonnet").write_text(ADD_MIXIN, encoding="utf-8")
    (vendor / "guestload-mixin").symlink_to(MIXIN)
    program = (
        found.group(1)
        + "{ rule: guestload.prometheusRules, dashboards: guestload.grafanaDashboards }\n"
    )
    result = run([jsonnet(), "-J", vendor, "-e", program])
    assert result.returncode == 0, result.stderr
    built = json.loads(result.stdout)
    rule_file, dashboard = VARIANTS["kubevirt"]
    by_name = {group["name"]: group for group in load_yaml(rule_file)["groups"]}
    assert {group["name"]: group for group in built["rule"]["spec"]["groups"]} == by_name
    assert built["dashboards"] == {
        "guestload": {dashboard.name: json.loads(dashboard.read_text(encoding="utf-8"))}
    }


NUMBERS = (0.3, 0.05, 2.5, 1e-7, 12.75, 100.0, 1048576.0, 0.1 + 0.2, -0.25, 1 / 3)


def test_the_mixin_prints_numbers_as_the_generator_expects() -> None:
    values = ", ".join(repr(value) for value in NUMBERS)
    program = f"local helpers = import 'helpers.libsonnet'; [helpers.number(x) for x in [{values}]]"
    result = run([jsonnet(), "-J", MIXIN, "-e", program])
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == [jsonnet_number(value) for value in NUMBERS]
    assert printed[:4] == ["0.3", "0.05", "2.5", "0.0000001"]
    assert all(float(text) == value for text, value in zip(printed, NUMBERS, strict=True))


AWKWARD_TEXTS = (
    "it's a 'quote' and a \\ backslash",
    "  leading spaces\nthen a line",
    "trailing space \nnext",
    "a blank line\n\nbetween",
    "ends with a newline\n",
    "two newlines at the end\n\n",
    "|||\nlooks like a text block",
    "line\n  ||| inside",
    'printf "%.2f" and 100 %',
    "tab\tand ünïcode ✓",
    "",
)


def test_the_jsonnet_writer_keeps_awkward_texts_exactly(tmp_path: Path) -> None:
    texts: list[Node] = list(AWKWARD_TEXTS)
    templated: list[Node] = [
        Template(text.replace("%", "%%") + " %(x)s\n%(x)s%(x)s end") for text in AWKWARD_TEXTS
    ]
    program = tmp_path / "texts.jsonnet"
    program.write_text(
        f"local v = {{ x: 'X' }};\n{render_jsonnet({'plain': texts, 'templated': templated})}\n",
        encoding="utf-8",
    )
    result = run([jsonnet(), program])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "plain": list(AWKWARD_TEXTS),
        "templated": [f"{text} X\nXX end" for text in AWKWARD_TEXTS],
    }
