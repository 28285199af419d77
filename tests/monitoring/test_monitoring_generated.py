"""Generated files match monitoring/config.yml; the alerts table matches the rule file."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.monitoring.monitoring_bundle import (
    ALERTS_DOC,
    CONFIG,
    PROMETHEUSRULE,
    REPOSITORY,
    RULE_FILE,
    alerting_rules,
    load_yaml,
    one_line,
    run,
)

ALERT_ROW = re.compile(r"\| \[(\w+)\]\(runbooks/\1\.md\) \| `(.+)` \| (\S+) \| (\w+) \|")
GENERATED = [
    RULE_FILE,
    PROMETHEUSRULE,
    REPOSITORY / "monitoring" / "dashboards" / "guestload.json",
    ALERTS_DOC,
    REPOSITORY / "monitoring" / "rules" / "guestload-kubevirt.rules.yml",
    REPOSITORY / "monitoring" / "kubernetes" / "kubevirt" / "prometheusrule.yaml",
    REPOSITORY / "monitoring" / "dashboards" / "guestload-kubevirt.json",
]
MIXIN = sorted((REPOSITORY / "monitoring" / "mixin").iterdir())
"""The mixin's files: only config.libsonnet holds values of config.yml, the rest refer to it."""


def _generate(*arguments: str | Path) -> tuple[int, str]:
    result = run([sys.executable, "-m", "monitoring.generate", *arguments])
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def copy_of_bundle(tmp_path: Path) -> Path:
    """A repository root in *tmp_path* holding config.yml and the committed generated files."""
    for path in [CONFIG, *GENERATED, *MIXIN]:
        target = tmp_path / path.relative_to(REPOSITORY)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return tmp_path


def test_committed_files_match_a_fresh_generation() -> None:
    status, output = _generate("--check")
    assert status == 0, output


def test_check_names_a_hand_edited_prometheusrule(copy_of_bundle: Path) -> None:
    edited = copy_of_bundle / PROMETHEUSRULE.relative_to(REPOSITORY)
    edited.write_text(edited.read_text(encoding="utf-8").replace("> 20", "> 25"), encoding="utf-8")
    status, output = _generate("--check", "--root", copy_of_bundle)
    assert status == 1
    assert "monitoring/kubernetes/prometheusrule.yaml: differs" in output
    assert "guestload.rules.yml" not in output


def test_a_threshold_change_in_config_reaches_every_generated_file(copy_of_bundle: Path) -> None:
    config = copy_of_bundle / CONFIG.relative_to(REPOSITORY)
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("value: 20\n", "value: 25\n", 1), encoding="utf-8")
    status, output = _generate("--check", "--root", copy_of_bundle)
    assert status == 1
    for path in GENERATED:
        assert f"{path.relative_to(REPOSITORY)}: differs" in output
    assert "monitoring/mixin/config.libsonnet: differs" in output
    assert "monitoring/mixin/rules.libsonnet" not in output
    status, output = _generate("--root", copy_of_bundle)
    assert status == 0, output
    regenerated = (copy_of_bundle / RULE_FILE.relative_to(REPOSITORY)).read_text(encoding="utf-8")
    assert "kubevirt_vmi_guest_vcpu_queue > 25\n" in regenerated
    status, output = _generate("--check", "--root", copy_of_bundle)
    assert status == 0, output


def test_prometheusrule_holds_the_rule_file_groups_unchanged() -> None:
    manifest = load_yaml(PROMETHEUSRULE)
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"] == "guestload"
    assert manifest["spec"]["groups"] == load_yaml(RULE_FILE)["groups"]


_SWAP_IN = "namespace_name_node:guestload_memory_swap_in_bytes:rate10m"
_MAJOR_FAULTS = "namespace_name_node:guestload_memory_major_faults:rate10m"
_VALUE_BY_QUERY = {"GuestMemoryThrash": (_SWAP_IN, _MAJOR_FAULTS)}
"""Alerts whose $value is one of two rates in different units (whichever side of an `or`
holds): their descriptions query each rate by name instead of printing $value."""


def test_every_alert_has_severity_and_the_three_annotations() -> None:
    runbook_template = load_yaml(CONFIG)["runbook_url_template"]
    for rule in alerting_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, rule["alert"]
        if rule["alert"] in _VALUE_BY_QUERY:
            for record in _VALUE_BY_QUERY[rule["alert"]]:
                assert f'"{record}{{namespace=' in annotations["description"], rule["alert"]
        else:
            assert '{{ $value | printf "%.2f" }}' in annotations["description"], rule["alert"]
        assert annotations["runbook_url"] == runbook_template.format(alertname=rule["alert"])


def test_queue_alerts_fire_at_once_on_a_cpu_cause_and_stalls_after_5m() -> None:
    """The alerting contract: queue > 10 warning and > 20 critical with no `for`, only on the
    cause cpu's condition (a busy share of at least 0.3, or a Windows guest's load, which
    counts only threads waiting for a CPU, and no memory thrash over the rate window or the
    guest's last statistics interval; the condition,
    not its series, which could linger a lookback where no staleness marker ends it); where
    the rules call the cause io GuestIOStall fires, and where
    they call it blocked GuestBlockedTasks, both after 5 minutes. GuestMemoryThrash fires on
    the memory condition alone (no queue) after 5 minutes, and GuestVCPUSaturation stands down
    for it."""
    by_name = {rule["alert"]: rule for rule in alerting_rules()}
    vm = "on (namespace, name, node)"
    queue = "kubevirt_vmi_guest_vcpu_queue"

    def cause(name: str) -> str:
        return f'namespace_name_node:guestload_pressure_cause:info{{cause="{name}"}}'

    def last_poll(rate: str) -> str:
        return f"namespace_name_node:guestload_memory_last_poll_{rate}:max"

    memory = (
        f"({_SWAP_IN} > 1048576 or {last_poll('swap_in_bytes_per_second')} > 1048576 "
        f"or {_MAJOR_FAULTS} > 100 or {last_poll('major_faults_per_second')} > 100)"
    )
    windows = 'namespace_name_node:guestload_guest_load_semantics:info{semantics="windows"}'
    cpu = (
        f"{vm} (namespace_name_node:guestload_cause_busy:ratio >= 0.3 or {windows}) "
        f"unless {vm} {memory}"
    )

    expected = {
        "GuestVCPUQueueHighWarning": (f"{queue} > 10 and {cpu}", None, "warning"),
        "GuestVCPUQueueHighCritical": (f"{queue} > 20 and {cpu}", None, "critical"),
        "GuestIOStall": (f"{queue} and {vm} {cause('io')}", "5m", "warning"),
        "GuestBlockedTasks": (f"{queue} and {vm} {cause('blocked')}", "5m", "warning"),
        "GuestMemoryThrash": (f"group by (namespace, name, node) {memory}", "5m", "warning"),
        "GuestVCPUSaturation": (
            "namespace_name_node:kubevirt_vmi_guest_load_5m_per_vcpu:ratio > 2 and "
            f"{vm} (namespace_name_node:vmi_cpu_busy:ratio_rate10m >= 0.3 or {windows}) "
            f"unless {vm} {memory}",
            "15m",
            "warning",
        ),
    }
    for name, (expr, for_, severity) in expected.items():
        assert one_line(by_name[name]["expr"]) == expr, name
        assert by_name[name].get("for") == for_, name
        assert by_name[name]["labels"]["severity"] == severity, name
    assert by_name["GuestVCPUHostContention"]["for"] == "10m"
    assert by_name["GuestLoadUnavailable"]["labels"]["severity"] == "info"


def test_every_setting_has_a_reason() -> None:
    config = load_yaml(CONFIG)
    settings = [*config["windows"].values(), *config["causes"].values()]
    for alert in config["alerts"].values():
        settings += [alert["for"], *alert["thresholds"].values()]
    for setting in settings:
        assert len(setting["why"].split()) >= 8, setting


def test_alerts_doc_table_lists_every_alert_as_in_the_rule_file() -> None:
    rows = {}
    for line in ALERTS_DOC.read_text(encoding="utf-8").splitlines():
        match = ALERT_ROW.fullmatch(line)
        if match:
            rows[match[1]] = (match[2], match[3], match[4])
    assert set(rows) == {rule["alert"] for rule in alerting_rules()}
    for rule in alerting_rules():
        expr, for_, severity = rows[rule["alert"]]
        assert expr == one_line(rule["expr"])
        assert for_ == rule.get("for", "none")
        assert severity == rule["labels"]["severity"]


def test_alerts_doc_states_the_severity_policy() -> None:
    text = ALERTS_DOC.read_text(encoding="utf-8")
    assert "## Severity policy" in text
    for severity, meaning in (
        ("critical", "now"),
        ("warning", "working hours"),
        ("info", "Context"),
    ):
        assert re.search(rf"^\| {severity} \|[^\n]*{meaning}", text, re.MULTILINE), severity


def test_alerts_doc_inhibit_rule_is_valid_alertmanager_config(tmp_path: Path) -> None:
    """The documented inhibit rule passes amtool and names the two shipped queue alerts."""
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool is not installed: it comes with Debian's prometheus-alertmanager")
    blocks = re.findall(
        r"^```yaml\n(.*?)^```$", ALERTS_DOC.read_text(encoding="utf-8"), re.M | re.S
    )
    inhibit = next(block for block in blocks if "inhibit_rules:" in block)
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        "route:\n  receiver: default\nreceivers:\n  - name: default\n" + inhibit, encoding="utf-8"
    )
    result = run([amtool, "check-config", config])
    assert result.returncode == 0, result.stdout + result.stderr
    names = {rule["alert"] for rule in alerting_rules()}
    for alertname in re.findall(r'alertname="(\w+)"', inhibit):
        assert alertname in names
