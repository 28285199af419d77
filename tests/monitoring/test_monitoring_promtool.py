"""The rule file and the PrometheusRule pass promtool; the promtool unit tests pass and cover."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring.rules import disk_throttle_use

from guestload.exposition.schema import EXPORTER_FAMILIES
from tests.monitoring.monitoring_bundle import (
    MONITORING,
    PROMETHEUSRULE,
    PROMTOOL_TESTS,
    RULE_FILE,
    alerting_rules,
    load_yaml,
    promtool,
    recorded_metrics,
    rules,
    run,
)


def _test_groups() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, group) for path in PROMTOOL_TESTS for group in load_yaml(path)["tests"]]


def test_promtool_test_files_exist() -> None:
    assert {path.name for path in PROMTOOL_TESTS} >= {
        "recording.test.yml",
        "queue-alerts.test.yml",
        "saturation-alerts.test.yml",
        "contention-alerts.test.yml",
        "exporter-alerts.test.yml",
        "cpu-shares.test.yml",
        "causes.test.yml",
        "io-stall-alerts.test.yml",
        "blocked-alerts.test.yml",
        "memory-alerts.test.yml",
    }


def test_rule_file_passes_promtool_check() -> None:
    result = run([promtool(), "check", "rules", RULE_FILE])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_prometheusrule_rules_pass_promtool_check(tmp_path: Path) -> None:
    manifest = load_yaml(PROMETHEUSRULE)
    extracted = tmp_path / "from-prometheusrule.rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}), encoding="utf-8")
    result = run([promtool(), "check", "rules", extracted])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_check_rejects_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "broken.rules.yml"
    broken.write_text(
        "groups:\n- name: g\n  rules:\n  - record: x:y\n    expr: sum(\n", encoding="utf-8"
    )
    result = run([promtool(), "check", "rules", broken])
    assert result.returncode != 0


@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    result = run([promtool(), "test", "rules", test_file])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=lambda path: path.name)
def test_promtool_tests_load_the_shipped_rule_file_in_rule_order(test_file: Path) -> None:
    document = load_yaml(test_file)
    assert [(test_file.parent / name).resolve() for name in document["rule_files"]] == [
        RULE_FILE.resolve()
    ]
    shipped_groups = [group["name"] for group in load_yaml(RULE_FILE)["groups"]]
    assert document["group_eval_order"] == shipped_groups


def test_every_case_has_a_unique_sentence_name() -> None:
    names = [group.get("name", "") for _, group in _test_groups()]
    for name in names:
        assert name[:1].isupper(), f"not a sentence: {name!r}"
        assert name.endswith("."), f"not a sentence: {name!r}"
        assert len(name.split()) >= 5, f"too short to say what it tests: {name!r}"
    assert len(names) == len(set(names)), "two cases share a name"


def test_every_recording_rule_has_an_expression_test() -> None:
    tested = {
        case["expr"].strip()
        for _, group in _test_groups()
        for case in group.get("promql_expr_test", [])
    }
    assert recorded_metrics() <= tested


def test_every_alert_is_tested_firing_and_silent_with_its_annotations() -> None:
    firing: dict[str, list[dict[str, Any]]] = {}
    silent: set[str] = set()
    for _, group in _test_groups():
        for case in group.get("alert_rule_test", []):
            if case["exp_alerts"]:
                firing.setdefault(case["alertname"], []).extend(case["exp_alerts"])
            else:
                silent.add(case["alertname"])
    names = {rule["alert"] for rule in alerting_rules()}
    assert names <= set(firing), f"never seen firing: {names - set(firing)}"
    assert names <= silent, f"never seen silent: {names - silent}"
    for alert in firing.values():
        for expected in alert:
            assert set(expected["exp_annotations"]) == {"summary", "description", "runbook_url"}


def test_every_health_series_has_an_alert_in_both_variants() -> None:
    """Prometheus's `up` and each 1/0 connection gauge of the exporter has an alert on 0."""
    health = ["up", *(spec.name for spec in EXPORTER_FAMILIES if spec.name.endswith("_up"))]
    assert {"guestload_libvirt_up", "guestload_libvirt_socket_up"} <= set(health)
    for path in (RULE_FILE, MONITORING / "rules" / "guestload-kubevirt.rules.yml"):
        expressions = [
            rule["expr"] for group in load_yaml(path)["groups"] for rule in group["rules"]
        ]
        for name in health:
            down = re.compile(rf"{name}{{[^}}]*}} == 0")
            assert any(down.fullmatch(expr) for expr in expressions), (path.name, name)


@pytest.mark.parametrize(
    ("record", "naive_expr", "symptom"),
    [
        (
            "kubevirt_vmi_guest_vcpu_queue",
            "clamp_min(kubevirt_vmi_guest_load_1m - kubevirt_vmi_vcpu_count, 0)",
            'name="db", namespace="shop", node="node-a"} 1.05E+01\n        got: nil',
        ),
        (
            "kubevirt_vmi_vcpu_count",
            "count by (namespace, name, node) (kubevirt_vmi_vcpu_seconds_total)",
            'name="web", namespace="shop", node="node-a"} 5E+00',
        ),
    ],
    ids=["queue-without-matching", "count-without-distinct-ids"],
)
def test_naive_expressions_fail_the_shipped_tests(
    tmp_path: Path, record: str, naive_expr: str, symptom: str
) -> None:
    """The rule tests catch naive recording rules: `-` without vector matching, and counting
    series instead of vCPUs."""
    (tmp_path / "rules").mkdir()
    document = load_yaml(RULE_FILE)
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == record:
                rule["expr"] = naive_expr
    (tmp_path / "rules" / RULE_FILE.name).write_text(yaml.safe_dump(document), encoding="utf-8")
    shutil.copytree(MONITORING / "tests", tmp_path / "tests")
    result = run([promtool(), "test", "rules", tmp_path / "tests" / "recording.test.yml"])
    assert result.returncode != 0
    assert symptom in result.stderr


_GUEST_BUSY = "namespace_name_node:guestload_guest_cpu_busy:ratio_rate10m"
_HOST_BUSY = "namespace_name_node:kubevirt_vmi_vcpu_busy:ratio_rate10m"
_IO_CAUSE = 'namespace_name_node:guestload_pressure_cause:info{cause="io"}'
_VM = "namespace, name, node"
_SWAP_IN = "namespace_name_node:guestload_memory_swap_in_bytes:rate10m"
_MAJOR_FAULTS = "namespace_name_node:guestload_memory_major_faults:rate10m"
_FAULT_COUNTERS = "guestload_memory_major_faults_total|kubevirt_vmi_memory_pgmajfault(_total)?"
_DB_BUSY_0625 = (
    f'exp: {{__name__="{_GUEST_BUSY}", name="db", namespace="shop", node="node-a"}} 6.25E-01'
)


def _guest_share(modes: str, total: str) -> str:
    return (
        f"sum by ({_VM}) (rate(guestload_guest_cpu_seconds_total{{mode=~{modes!r}}}[10m]))"
        f" / on ({_VM}) "
        f"sum by ({_VM}) (rate(guestload_guest_cpu_seconds_total{{mode=~{total!r}}}[10m]))"
    ).replace("'", '"')


@pytest.mark.parametrize(
    ("rule", "mutant", "test_file", "symptom"),
    [
        (
            _GUEST_BUSY,
            _guest_share("user|nice|system|irq|softirq", ".+"),
            "cpu-shares.test.yml",
            _DB_BUSY_0625,
        ),
        (
            _GUEST_BUSY,
            _guest_share("user|nice|system|irq|softirq|steal", "[^g].*"),
            "cpu-shares.test.yml",
            _DB_BUSY_0625,
        ),
        (
            _HOST_BUSY,
            f"sum by ({_VM}) (max by ({_VM}, id) "
            f"(rate(kubevirt_vmi_vcpu_seconds_total[10m]))) / on ({_VM}) kubevirt_vmi_vcpu_count",
            "cpu-shares.test.yml",
            f'exp: {{__name__="{_HOST_BUSY}", name="win", namespace="shop", node="node-a"}} 5E-01',
        ),
        (
            "GuestVCPUQueueHighWarning",
            "kubevirt_vmi_guest_vcpu_queue > 10",
            "queue-alerts.test.yml",
            "name: An I/O-stalled VM (busy 0.02, iowait 0.98) with a queue of 25 fires neither",
        ),
        (
            "GuestVCPUQueueHighWarning",
            "kubevirt_vmi_guest_vcpu_queue > 10 and on (namespace, name, node) "
            "namespace_name_node:vmi_cpu_busy:ratio_rate10m >= 0.3",
            "queue-alerts.test.yml",
            "name: A guest that turns CPU-bound after a long idle spell fires the warning at once",
        ),
        (
            "GuestVCPUQueueHighWarning",
            f"kubevirt_vmi_guest_vcpu_queue > 10 unless on ({_VM}) {_IO_CAUSE}",
            "queue-alerts.test.yml",
            "name: Idle vCPUs without iowait (cause blocked, tasks asleep elsewhere) fire no queue",
        ),
        (
            "GuestIOStall",
            f"kubevirt_vmi_guest_vcpu_queue > 10 and on ({_VM}) "
            "namespace_name_node:vmi_cpu_busy:ratio_rate10m < 0.3",
            "io-stall-alerts.test.yml",
            "name: Idle vCPUs starved by the host (steal 0.75, no iowait) do not fire",
        ),
        (
            "GuestVCPUSaturation",
            "namespace_name_node:kubevirt_vmi_guest_load_5m_per_vcpu:ratio > 2",
            "saturation-alerts.test.yml",
            "name: A small VM whose load is tasks blocked on I/O on idle vCPUs never fires",
        ),
        (
            "GuestVCPUSaturation",
            f"namespace_name_node:kubevirt_vmi_guest_load_5m_per_vcpu:ratio > 2 unless on ({_VM}) "
            f"{_IO_CAUSE}",
            "queue-alerts.test.yml",
            "name: VMs with idle vCPUs and a load of 200 never fire a queue or saturation alert",
        ),
        (
            "GuestBlockedTasks",
            f"kubevirt_vmi_guest_vcpu_queue > 10 and on ({_VM}) "
            f"namespace_name_node:guestload_cause_busy:ratio < 0.3 and on ({_VM}) "
            "namespace_name_node:guestload_cause_iowait:ratio < 0.1",
            "blocked-alerts.test.yml",
            "name: Idle vCPUs on a contended host (busy 0.0625, steal and delay 0.25, no iowait)",
        ),
        (
            "GuestVCPUSaturation",
            f"namespace_name_node:kubevirt_vmi_guest_load_5m_per_vcpu:ratio > 2 and on ({_VM}) "
            "namespace_name_node:vmi_cpu_busy:ratio_rate10m >= 0.3",
            "memory-alerts.test.yml",
            "name: The measured swap storm fires GuestMemoryThrash 5 minutes after its rate",
        ),
        (
            "GuestMemoryThrash",
            f"{_SWAP_IN} > 1048576 and on ({_VM}) {_MAJOR_FAULTS} > 100",
            "memory-alerts.test.yml",
            "name: Swap-in of exactly 1 MiB/s with exactly 100 major faults/s is not memory",
        ),
        (
            "GuestMemoryThrash",
            f"{_SWAP_IN} >= 1048576 or {_MAJOR_FAULTS} >= 100",
            "memory-alerts.test.yml",
            "name: Swap-in of exactly 1 MiB/s with exactly 100 major faults/s is not memory",
        ),
        (
            "GuestMemoryThrash",
            f"({_SWAP_IN} > 1048576 or {_MAJOR_FAULTS} > 100) and on ({_VM}) "
            "kubevirt_vmi_guest_vcpu_queue > 10",
            "memory-alerts.test.yml",
            "name: A thrashing guest with a short queue (load 2 on one vCPU) has no cause series",
        ),
        (
            _SWAP_IN,
            f"max by ({_VM}) (rate(guestload_memory_swap_in_bytes_total[10m]))",
            "memory-alerts.test.yml",
            "name: KubeVirt's memory counters alone, under their current names and their names",
        ),
        (
            _MAJOR_FAULTS,
            f"sum by ({_VM}) (rate({{__name__=~{_FAULT_COUNTERS!r}}}[10m]))".replace("'", '"'),
            "memory-alerts.test.yml",
            "name: A VM whose memory counters both guestload and KubeVirt export has one rate",
        ),
    ],
    ids=[
        "busy-counting-guest-time-twice",
        "busy-counting-steal",
        "host-busy-losing-a-state-change",
        "queue-alert-without-io-gate",
        "queue-alert-on-the-10-minute-busy-share",
        "queue-alert-gated-only-on-io",
        "io-stall-without-iowait",
        "saturation-without-io-gate",
        "saturation-gated-only-on-io",
        "blocked-without-contention-gate",
        "saturation-without-memory-gate",
        "thrash-needing-both-rates",
        "thrash-at-the-thresholds",
        "thrash-needing-a-long-queue",
        "swap-in-from-guestload-only",
        "major-faults-summed-over-jobs",
    ],
)
def test_plausible_wrong_cause_rules_fail_the_shipped_tests(
    tmp_path: Path, rule: str, mutant: str, test_file: str, symptom: str
) -> None:
    """Each mutant is a plausible wrong rule: a named case of the shipped tests catches it."""
    (tmp_path / "rules").mkdir()
    document = load_yaml(RULE_FILE)
    replaced = 0
    for group in document["groups"]:
        for candidate in group["rules"]:
            if rule in (candidate.get("record"), candidate.get("alert")):
                candidate["expr"] = mutant
                replaced += 1
    assert replaced == 1
    (tmp_path / "rules" / RULE_FILE.name).write_text(yaml.safe_dump(document), encoding="utf-8")
    shutil.copytree(MONITORING / "tests", tmp_path / "tests")
    result = run([promtool(), "test", "rules", tmp_path / "tests" / test_file])
    assert result.returncode != 0
    assert symptom in result.stderr


_LAST_POLL = "guestload_memory_last_poll"
_MEMORY_GATE = (
    "\n      unless on (namespace, name, node)\n"
    "    (\n"
    f"      {_SWAP_IN} > 1048576\n"
    "        or\n"
    f"      namespace_name_node:{_LAST_POLL}_swap_in_bytes_per_second:max > 1048576\n"
    "        or\n"
    f"      {_MAJOR_FAULTS} > 100\n"
    "        or\n"
    f"      namespace_name_node:{_LAST_POLL}_major_faults_per_second:max > 100\n"
    "    )"
)
_CAUSE_GOT = 'got: {__name__="namespace_name_node:guestload_pressure_cause:info", '


@pytest.mark.parametrize(
    ("clause", "symptom"),
    [
        (
            "namespace_name_node:guestload_cause_busy:ratio >= 0.3\n        or\n      "
            'namespace_name_node:guestload_guest_load_semantics:info{semantics="windows"}\n    )',
            _CAUSE_GOT + 'cause="cpu", name="storm"',
        ),
        (
            "namespace_name_node:guestload_cause_iowait:ratio < 0.1\n    )",
            _CAUSE_GOT + 'cause="io", name="slowswap"',
        ),
    ],
    ids=["cpu-cause-without-memory-gate", "io-cause-without-memory-gate"],
)
def test_a_cause_that_does_not_stand_down_for_memory_fails_the_memory_tests(
    tmp_path: Path, clause: str, symptom: str
) -> None:
    """Without its `unless` on the memory condition, cpu (a storm in system time) or io (a
    storm on a slow swap device) joins memory as a second cause, and the memory tests say so."""
    (tmp_path / "rules").mkdir()
    document = load_yaml(RULE_FILE)
    replaced = 0
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == "namespace_name_node:guestload_pressure_cause:info":
                gated = clause + _MEMORY_GATE
                assert rule["expr"].count(gated) == 1
                rule["expr"] = rule["expr"].replace(gated, clause)
                replaced += 1
    assert replaced == 1
    (tmp_path / "rules" / RULE_FILE.name).write_text(yaml.safe_dump(document), encoding="utf-8")
    shutil.copytree(MONITORING / "tests", tmp_path / "tests")
    result = run([promtool(), "test", "rules", tmp_path / "tests" / "memory-alerts.test.yml"])
    assert result.returncode != 0
    assert symptom in result.stderr


def test_disk_throttle_use_query_gives_each_capped_disks_tightest_cap(tmp_path: Path) -> None:
    # Not recorded (GuestIOStall's text and a panel compute it for the VMs they show): run the
    # generated query over the disks of the io-stall file's throttle case. vda's IOPS (5 of 5,
    # 0 before the stall); vdc's read bytes and its IOPS (4.5 of 10 MB/s, 45 of 100 requests)
    # alike; the uncapped vdb has no use.
    case = next(
        group
        for path, group in _test_groups()
        if path.name == "io-stall-alerts.test.yml" and "throttle cap" in group["name"]
    )
    vm = 'namespace="shop", name="db", node="node-a"'
    query = disk_throttle_use(vm)

    def samples(**use: float) -> list[dict[str, Any]]:
        return [
            {"labels": f'{{{vm}, device="{device}"}}', "value": value}
            for device, value in use.items()
        ]

    document = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": case["interval"],
                "input_series": case["input_series"],
                "promql_expr_test": [
                    {"expr": query, "eval_time": "19m", "exp_samples": samples(vda=1, vdc=0.45)},
                    {"expr": query, "eval_time": "5m", "exp_samples": samples(vda=0, vdc=0.45)},
                ],
            }
        ],
    }
    path = tmp_path / "throttle-use.test.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    result = run([promtool(), "test", "rules", path])
    assert result.returncode == 0, result.stdout + result.stderr
