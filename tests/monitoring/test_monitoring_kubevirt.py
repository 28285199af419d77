"""The KubeVirt variant beside KubeVirt's own rules (v1.7, v1.8, v1.9, and the observability
controller's v0.0.2), under promtool.

Each case loads KubeVirt's rules as released and guestload-kubevirt.rules.yml, feeds series
shaped like virt-handler's, and counts the firing queue alerts per VM and alert name.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Alertmanager, WebhookReceiver, http_post_json, wait_until
from tests.monitoring.kubevirt_cluster import (
    KUBEVIRT_RULES,
    QUEUE_ALERTS,
    VARIANT_RULES,
    VIRT_HANDLER_TARGET,
    VMS,
    controller_vmstats_lines,
    expected_queue_alerts,
    guest_cpu_lines,
    kubevirt_recorded_names,
    metric_lines,
    queue_alerts_keep_node,
    recorded_names,
    selector,
)
from tests.monitoring.monitoring_bundle import (
    DASHBOARD,
    EXPORTER_METRICS,
    MONITORING,
    REPOSITORY,
    RULE_FILE,
    check_promql,
    load_yaml,
    metric_names,
    promtool,
    run,
)

GUESTLOAD_TARGET = {"job": "guestload", "instance": "node-a"}
EVAL_TIME = "15m"
"""Past the 10-minute rate window, so the host's view of the busy share exists too."""
FIRING_QUEUE_ALERTS = (
    'count by (namespace, name, alertname) (ALERTS{alertstate="firing", '
    'alertname=~"GuestVCPUQueueHigh.*"})'
)


def _input_series(*, bare: bool, controller: bool = False) -> list[dict[str, str]]:
    """Thirty minutes of every VM's series at one sample a minute; *controller*: with the
    observability controller's vmstats copy of virt-handler's."""
    series = []
    for vm in VMS:
        lines = list(metric_lines(vm, seconds=60, target=VIRT_HANDLER_TARGET, bare=bare))
        if not bare:
            lines += guest_cpu_lines(vm, seconds=60, target=GUESTLOAD_TARGET)
        if controller:
            lines += controller_vmstats_lines(vm, seconds=60)
        for name, labels, per_minute in lines:
            values = f"0+{per_minute:g}x30" if name.endswith("_total") else f"{per_minute:g}x30"
            series.append({"series": selector(name, labels), "values": values})
    return series


def _count_case(expected: dict[tuple[str, str, str], int]) -> dict[str, Any]:
    return {
        "expr": FIRING_QUEUE_ALERTS,
        "eval_time": EVAL_TIME,
        "exp_samples": [
            {
                "labels": selector("", {"namespace": ns, "name": name, "alertname": alert}),
                "value": n,
            }
            for (ns, name, alert), n in sorted(expected.items())
        ],
    }


def _alerts_case(expected: dict[tuple[str, str, str], dict[str, str]]) -> dict[str, Any]:
    """The firing queue alerts, exactly: (namespace, name, alertname) -> their other labels."""
    return {
        "expr": FIRING_QUEUE_ALERTS.removeprefix("count by (namespace, name, alertname) (")[:-1],
        "eval_time": EVAL_TIME,
        "exp_samples": [
            {
                "labels": selector(
                    "ALERTS",
                    {
                        "alertstate": "firing",
                        "namespace": ns,
                        "name": name,
                        "alertname": alert,
                        **labels,
                    },
                ),
                "value": 1,
            }
            for (ns, name, alert), labels in sorted(expected.items())
        ],
    }


def _severity(alertname: str) -> str:
    return "warning" if alertname.endswith("Warning") else "critical"


def _run_promtool(tmp_path: Path, rule_files: list[Path], tests: list[dict[str, Any]]) -> str:
    # Without an order promtool evaluates groups in map order, which varies between runs: an
    # alert reading another group's record then lags by one evaluation, or not. Records first.
    groups = [group["name"] for path in rule_files for group in load_yaml(path)["groups"]]
    document = {
        "rule_files": [str(path) for path in rule_files],
        "evaluation_interval": "1m",
        "group_eval_order": sorted(groups, key=lambda name: "alert" in name.lower()),
        "tests": tests,
    }
    path = tmp_path / "coexistence.test.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    result = run([promtool(), "test", "rules", path])
    return result.stdout + result.stderr if result.returncode else ""


def _static_labels(path: Path, alertname: str) -> dict[str, str]:
    for group in load_yaml(path)["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alertname:
                return {k: v for k, v in rule["labels"].items() if k != "severity"}
    raise AssertionError(f"{path.name} has no {alertname}")


@pytest.mark.parametrize("version", sorted(KUBEVIRT_RULES))
def test_one_queue_alert_per_vm_fires_beside_kubevirts_rules(tmp_path: Path, version: str) -> None:
    """Under real scrape labels KubeVirt's subtraction is empty and guestload's alert fires;
    with bare series (KubeVirt's own test shape) KubeVirt's fires and guestload's stands down."""
    kubevirt = KUBEVIRT_RULES[version]
    node = {"node": "node-a"}
    ours = _static_labels(VARIANT_RULES, QUEUE_ALERTS[0])
    real = {
        "name": f"Scraped virt-handler series fire guestload's alert once per VM ({version}).",
        "interval": "1m",
        "input_series": _input_series(bare=False),
        "promql_expr_test": [
            _count_case(expected_queue_alerts()),
            _alerts_case(
                {
                    key: {**node, **ours, "severity": _severity(key[2])}
                    for key in expected_queue_alerts()
                }
            ),
        ],
    }
    kubevirt_labels = _static_labels(kubevirt, QUEUE_ALERTS[0])
    bare_labels = (
        {**node, **kubevirt_labels} if queue_alerts_keep_node(kubevirt) else kubevirt_labels
    )
    above = set(expected_queue_alerts())
    bare = {
        "name": f"Bare series fire KubeVirt's alert and guestload's stands down ({version}).",
        "interval": "1m",
        "input_series": _input_series(bare=True),
        "promql_expr_test": [
            _count_case(dict.fromkeys(above, 1)),
            _alerts_case({key: {**bare_labels, "severity": _severity(key[2])} for key in above}),
        ],
    }
    failure = _run_promtool(tmp_path, [kubevirt, VARIANT_RULES], [real, bare, _kubevirt_ci_case()])
    assert not failure, failure


def test_the_controllers_vmstats_copy_fires_no_second_alert(tmp_path: Path) -> None:
    """With --enable-vmstats the observability controller exports virt-handler's guest series
    again, scraped under its own namespace: the variant takes the VM's namespace from
    ``exported_namespace``, so each VM still fires once, under its own namespace."""
    node = {"node": "node-a"}
    ours = _static_labels(VARIANT_RULES, QUEUE_ALERTS[0])
    case = {
        "name": "virt-handler's and the controller's copies of a VM fire one alert per VM.",
        "interval": "1m",
        "input_series": _input_series(bare=False, controller=True),
        "promql_expr_test": [
            _count_case(expected_queue_alerts()),
            _alerts_case(
                {
                    key: {**node, **ours, "severity": _severity(key[2])}
                    for key in expected_queue_alerts()
                }
            ),
        ],
    }
    rules = [KUBEVIRT_RULES["observability-controller-v0.0.2"], VARIANT_RULES]
    failure = _run_promtool(tmp_path, rules, [case])
    assert not failure, failure


def test_the_variant_reads_every_kubevirt_series_with_the_vms_namespace() -> None:
    """Every KubeVirt series a rule of the variant reads goes through the label_replace that
    takes ``exported_namespace``; only KubeVirt's own queue record is read as it is."""
    wrapped = re.compile(
        r"label_replace\((?:rate\()?kubevirt_vmi_\w+(?:\{[^}]*\})?(?:\[\w+\]\))?"
        r'(?: offset \w+)?, "namespace", "\$1", "exported_namespace", "\(\.\+\)"\)'
    )
    seen = 0
    for group in load_yaml(VARIANT_RULES)["groups"]:
        for rule in group["rules"]:
            seen += len(wrapped.findall(rule["expr"]))
            rest = set(re.findall(r"(?<![\w:])kubevirt_vmi_\w+", wrapped.sub("", rule["expr"])))
            assert rest <= {"kubevirt_vmi_guest_vcpu_queue"}, (rule.get("record"), rest)
    assert seen >= 10


def _kubevirt_ci_case() -> dict[str, Any]:
    """KubeVirt's own test of GuestVCPUQueueHighCritical (hack/prom-rule-ci/prom-rules-tests.yaml
    at v1.9.0: load 0, 12, 25, 5 on two vCPUs whose counters stand still), with virt-handler's
    scrape labels: one critical alert at 2m and none at 1m and 3m, as KubeVirt expects of its
    own."""
    vm = {"namespace": "testns", "name": "vm1", "node": "node-a", **VIRT_HANDLER_TARGET}
    critical = 'ALERTS{alertstate="firing", alertname="GuestVCPUQueueHighCritical"}'
    return {
        "name": "KubeVirt's own queue test input, scraped, fires one critical alert at 2m.",
        "interval": "1m",
        "input_series": [
            {"series": selector("kubevirt_vmi_guest_load_1m", vm), "values": "0 12 25 5"},
            *(
                {
                    "series": selector("kubevirt_vmi_vcpu_seconds_total", {**vm, "id": vcpu}),
                    "values": "0 0 0 0",
                }
                for vcpu in ("0", "1")
            ),
        ],
        "promql_expr_test": [
            {"expr": f"count({critical})", "eval_time": "1m", "exp_samples": []},
            {
                "expr": f"count by (namespace, name) ({critical})",
                "eval_time": "2m",
                "exp_samples": [{"labels": '{namespace="testns", name="vm1"}', "value": 1}],
            },
            {"expr": f"count({critical})", "eval_time": "3m", "exp_samples": []},
        ],
    }


def test_the_count_catches_guestloads_plain_bundle_beside_kubevirt_1_7(tmp_path: Path) -> None:
    """The plain bundle records the queue KubeVirt v1.7 alerts on: the same VM fires twice
    (the plain bundle's alert stays quiet for the I/O stall, KubeVirt's does not)."""
    doubled = {key: 2 for key in expected_queue_alerts()}
    doubled[("shop", "stalled", "GuestVCPUQueueHighWarning")] = 1
    case = {
        "name": "The plain bundle beside KubeVirt v1.7 fires each queue alert twice per VM.",
        "interval": "1m",
        "input_series": _input_series(bare=False),
        "promql_expr_test": [_count_case(doubled)],
    }
    failure = _run_promtool(tmp_path, [KUBEVIRT_RULES["v1.7.0"], RULE_FILE], [case])
    assert not failure, failure


@pytest.mark.parametrize("version", ["v1.9.0", "observability-controller-v0.0.2"])
def test_without_the_stand_down_bare_series_fire_both_alerts(tmp_path: Path, version: str) -> None:
    """Where KubeVirt's rules match (bare series), the variant's `unless` is what keeps its
    queue alerts from doubling KubeVirt's (or the observability controller's)."""
    document = load_yaml(VARIANT_RULES)
    cut = 0
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in QUEUE_ALERTS:
                rule["expr"] = rule["expr"].split("\n  unless on (namespace, name)\n")[0]
                cut += 1
    assert cut == len(QUEUE_ALERTS)
    mutant = tmp_path / "no-stand-down.rules.yml"
    mutant.write_text(yaml.safe_dump(document), encoding="utf-8")
    case = {
        "name": f"Without its stand-down the variant doubles {version}'s alerts on bare series.",
        "interval": "1m",
        "input_series": _input_series(bare=True),
        "promql_expr_test": [_count_case(dict.fromkeys(expected_queue_alerts(), 2))],
    }
    failure = _run_promtool(tmp_path, [KUBEVIRT_RULES[version], mutant], [case])
    assert not failure, failure


def test_the_variant_records_no_name_any_kubevirt_release_records() -> None:
    ours = recorded_names(VARIANT_RULES)
    assert len(ours) == len(set(ours)), "the variant records a name twice"
    releases = kubevirt_recorded_names()
    assert {
        "v1.6.4",
        "v1.7.0",
        "v1.8.0",
        "v1.8.3",
        "v1.9.0",
        "observability-controller-v0.0.2",
    } <= set(releases)
    for release, names in releases.items():
        assert "kubevirt_vmi_guest_vcpu_queue" in names, release
        assert not set(ours) & set(names), release
    # The plain bundle is the one that collides.
    assert set(recorded_names(RULE_FILE)) & set(releases["v1.7.0"]) == {
        "kubevirt_vmi_vcpu_count",
        "kubevirt_vmi_guest_vcpu_queue",
    }


@pytest.mark.parametrize("version", sorted(KUBEVIRT_RULES))
def test_the_fixtures_are_kubevirts_rules_with_their_source(version: str) -> None:
    path = KUBEVIRT_RULES[version]
    repository, _, tag = path.name.removesuffix(".rules.yml").rpartition("-")
    comment = path.read_text(encoding="utf-8").split("groups:")[0].splitlines()
    header = " ".join(line.lstrip("# ") for line in comment)
    assert f"github.com/kubevirt/{repository} at tag {tag}" in header
    assert "pkg/monitoring/rules/alerts/vms.go" in header
    assert [group["name"] for group in load_yaml(path)["groups"]] == [
        "recordingRules.rules",
        "alerts.rules",
    ]
    assert set(recorded_names(path)) <= set(kubevirt_recorded_names()[version])
    result = run([promtool(), "check", "rules", path])
    assert result.returncode == 0, result.stdout + result.stderr


def _rules_by_group(path: Path) -> dict[str, list[str]]:
    return {
        group["name"]: sorted(json.dumps(rule, sort_keys=True) for rule in group["rules"])
        for group in load_yaml(path)["groups"]
    }


def test_the_observability_controller_ships_kubevirt_1_9s_queue_rules() -> None:
    """Its v0.0.2 records the same queue and alerts on it with KubeVirt v1.9.0's expressions,
    labels and annotations, so the variant's stand-down covers it unchanged."""
    controller = KUBEVIRT_RULES["observability-controller-v0.0.2"]
    assert _rules_by_group(controller) == _rules_by_group(KUBEVIRT_RULES["v1.9.0"])
    # Only the order differs: the controller's toolkit sorts alerts by name.
    alerts = [rule["alert"] for rule in load_yaml(controller)["groups"][1]["rules"]]
    assert alerts == sorted(QUEUE_ALERTS)


def test_variant_alerts_carry_kubevirts_names_and_label() -> None:
    alerts = [rule for group in load_yaml(VARIANT_RULES)["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in alerts if "alert" in rule}
    assert set(QUEUE_ALERTS) <= names
    for rule in alerts:
        if "alert" in rule:
            assert rule["labels"]["operator_health_impact"] == "none"
            assert "kubernetes_operator_part_of" not in rule["labels"]
            assert "for" not in rule or rule["alert"] not in QUEUE_ALERTS


def _documented_inhibition() -> str:
    text = (REPOSITORY / "docs" / "operators" / "kubevirt.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"^( *)```yaml\n(.*?)^\1```$", text, re.M | re.S)
    return textwrap.dedent(block[1])


def test_the_documented_inhibition_is_valid_alertmanager_config(tmp_path: Path) -> None:
    """docs/operators/kubevirt.md's inhibit rules pass amtool and name the queue alerts."""
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool is not installed: it comes with Debian's prometheus-alertmanager")
    inhibit = _documented_inhibition()
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        "route:\n  receiver: default\nreceivers:\n  - name: default\n" + inhibit, encoding="utf-8"
    )
    result = run([amtool, "check-config", config])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "inhibit_rules:" in inhibit
    for name in QUEUE_ALERTS:
        assert name in inhibit


class _InhibitingAlertmanager(Alertmanager):
    """The lab's Alertmanager with the inhibit rules of the KubeVirt guide."""

    def __init__(self, *, inhibit_rules: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._config["inhibit_rules"] = inhibit_rules


def test_a_real_alertmanager_shows_one_queue_alert_per_vm_and_condition(tmp_path: Path) -> None:
    """Both rules' alerts sent at once (the evaluation at a crossing): KubeVirt's hides
    guestload's of the same name and VM; the critical hides the warning of its VM;
    GuestIOStall hides both rules' queue alerts of its VM."""
    ours = {"operator_health_impact": "none", "node": "node-a"}
    kubevirt = {
        "operator_health_impact": "none",
        "kubernetes_operator_part_of": "kubevirt",
        "kubernetes_operator_component": "kubevirt",
    }
    sent = {
        "kubevirt-hot-warning": ("hot", "GuestVCPUQueueHighWarning", "warning", kubevirt),
        "guestload-hot-warning": ("hot", "GuestVCPUQueueHighWarning", "warning", ours),
        "guestload-warm-warning": ("warm", "GuestVCPUQueueHighWarning", "warning", ours),
        "guestload-cold-critical": ("cold", "GuestVCPUQueueHighCritical", "critical", ours),
        "kubevirt-cold-warning": ("cold", "GuestVCPUQueueHighWarning", "warning", kubevirt),
        "guestload-stalled-warning": ("stalled", "GuestVCPUQueueHighWarning", "warning", ours),
        "kubevirt-stalled-warning": ("stalled", "GuestVCPUQueueHighWarning", "warning", kubevirt),
        "guestload-stalled-iostall": ("stalled", "GuestIOStall", "warning", ours),
    }
    inhibit = yaml.safe_load(_documented_inhibition())["inhibit_rules"]
    with ProcessRegistry() as registry, WebhookReceiver() as webhook:
        alertmanager = _InhibitingAlertmanager(
            inhibit_rules=inhibit, workdir=tmp_path, webhook_url=webhook.url, registry=registry
        )
        alertmanager.start()
        http_post_json(
            f"{alertmanager.url}/api/v2/alerts",
            [
                {
                    "labels": {
                        "alertname": alert,
                        "namespace": "shop",
                        "name": vm,
                        "severity": severity,
                        "sent": key,
                        **labels,
                    },
                    "annotations": {"summary": key},
                }
                for key, (vm, alert, severity, labels) in sent.items()
            ],
        )
        states = wait_until(
            lambda: (
                {
                    alert["labels"]["sent"]: alert["status"]["state"]
                    for alert in alertmanager.alerts()
                }
                or None
            ),
            timeout=10.0,
            what="Alertmanager listing the alerts",
        )
    assert states == {
        "kubevirt-hot-warning": "active",
        "guestload-hot-warning": "suppressed",
        "guestload-warm-warning": "active",
        "guestload-cold-critical": "active",
        "kubevirt-cold-warning": "suppressed",
        "guestload-stalled-warning": "suppressed",
        "kubevirt-stalled-warning": "suppressed",
        "guestload-stalled-iostall": "active",
    }


def _strings(node: Any, path: str = "") -> dict[str, str]:
    """Every string of a JSON document by its path."""
    if isinstance(node, dict):
        return {
            k: v for key, value in node.items() for k, v in _strings(value, f"{path}/{key}").items()
        }
    if isinstance(node, list):
        return {
            k: v for i, item in enumerate(node) for k, v in _strings(item, f"{path}/{i}").items()
        }
    return {path: node} if isinstance(node, str) else {}


def test_the_variant_dashboard_reads_the_variants_records(tmp_path: Path) -> None:
    """Same panels as the plain dashboard; its queries name only what the variant records and
    the exporters export, never a KubeVirt record."""
    plain = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variant = json.loads(
        (MONITORING / "dashboards" / "guestload-kubevirt.json").read_text(encoding="utf-8")
    )
    assert variant["uid"] != plain["uid"]
    plain_strings, variant_strings = _strings(plain), _strings(variant)
    assert plain_strings.keys() == variant_strings.keys()
    queries = [
        re.sub(r"^label_values\((.+), *\w+\)$", r"\1", text)
        for path, text in variant_strings.items()
        if path.endswith("/expr") or (path.endswith("/query") and "(" in text)
    ]
    assert queries
    recorded = set(recorded_names(VARIANT_RULES))
    kubevirt = {name for names in kubevirt_recorded_names().values() for name in names}
    used = {name for query in queries for name in metric_names(query)}
    assert used & recorded
    assert not used & kubevirt
    assert used <= recorded | EXPORTER_METRICS
    substituted = [
        re.sub(r"\$__\w+", "5m", query)
        .replace("$namespace", ".*")
        .replace("$name", ".*")
        .replace("$node", ".*")
        for query in queries
        if "$datasource" not in query and "label_values" not in query
    ]
    result = check_promql(substituted, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
