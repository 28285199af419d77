"""Rule evaluation cost: the rule files a cluster run loads, and each evaluation's time.

Beside the rule file measured, a run loads two reference groups evaluated at the same interval:

- ``bench.reference``: one ``rate`` over the guest CPU counters, summed per VM (one pass over
  ``guestload_guest_cpu_seconds_total``, one series per VM out). The recording group's cost is
  stated as a multiple of it.
- ``bench.inputs``: each input family the recording rules read, read once (a counter's rate,
  a gauge's max, summed or maxed per VM): what any set of rules reading those inputs costs at
  least, whatever it computes from them.

A second rule file (``compare``, such as the rules of an older commit) can be loaded into the
same Prometheus: its groups and recorded series are renamed with a prefix, so the two files
neither write each other's series nor read each other's results.

Each group's and each rule's time is Prometheus's own (``/api/v1/rules`` ``evaluationTime``,
the figure ``prometheus_rule_group_last_duration_seconds`` exports), taken once per evaluation
(keyed by its ``lastEvaluation``).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

REFERENCE_GROUP = "bench.reference"
INPUTS_GROUP = "bench.inputs"
COMPARE_PREFIX = "compare:"
"""Put before the compared file's group names and recorded series."""

VM = "namespace, name, node"
GUEST_CPU = "guestload_guest_cpu_seconds_total"
INPUT_COUNTERS = (
    GUEST_CPU,
    "kubevirt_vmi_vcpu_seconds_total",
    "kubevirt_vmi_vcpu_delay_seconds_total",
    "guestload_memory_swap_in_bytes_total",
    "guestload_memory_major_faults_total",
)
"""The counters the recording rules read that the simulated exporter exports."""
INPUT_GAUGES = (
    "kubevirt_vmi_guest_load_1m",
    "kubevirt_vmi_guest_load_5m",
    "guestload_guest_cpu_last_poll_ratio",
    "guestload_guest_os_info",
    "guestload_disk_last_poll_requests_per_second",
    "guestload_disk_last_poll_bytes_per_second",
    "guestload_disk_throttle_iops",
    "guestload_disk_throttle_bytes_per_second",
    "guestload_memory_last_poll_swap_in_bytes_per_second",
    "guestload_memory_last_poll_major_faults_per_second",
)
"""The gauges the recording rules read (a disk's or the OS's series, maxed per VM)."""


def reference_rule_file(path: Path, *, window: str) -> Path:
    """Write the two reference groups (see the module) to *path*, rates over *window*."""
    reference = {
        "record": f"bench:guestload_guest_cpu_seconds:rate{window}",
        "expr": f"sum by ({VM}) (rate({GUEST_CPU}[{window}]))",
    }
    inputs = [
        {
            "record": f"bench_inputs:{name}:rate{window}",
            "expr": f"sum by ({VM}) (rate({name}[{window}]))",
        }
        for name in INPUT_COUNTERS
    ] + [
        {"record": f"bench_inputs:{name}:max", "expr": f"max by ({VM}) ({name})"}
        for name in INPUT_GAUGES
    ]
    groups = [
        {"name": REFERENCE_GROUP, "rules": [reference]},
        {"name": INPUTS_GROUP, "rules": inputs},
    ]
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def check_inputs(rule_file: Path) -> None:
    """Fail when the rule file no longer reads an input family ``bench.inputs`` reads."""
    text = rule_file.read_text()
    missing = [name for name in (*INPUT_COUNTERS, *INPUT_GAUGES) if name not in text]
    if missing:
        raise ValueError(f"{rule_file} reads none of {missing}: update bench.rulecost")


def renamed_rule_file(source: Path, path: Path) -> Path:
    """Write *source*'s rules to *path* with :data:`COMPARE_PREFIX` before every group name
    and every series it records, wherever its expressions read them."""
    document = yaml.safe_load(source.read_text())
    recorded = sorted(
        {
            rule["record"]
            for group in document["groups"]
            for rule in group["rules"]
            if "record" in rule
        },
        key=len,
        reverse=True,
    )
    pattern = re.compile(
        r"(?<![\w:])(" + "|".join(re.escape(name) for name in recorded) + r")(?![\w:])"
    )
    for group in document["groups"]:
        group["name"] = COMPARE_PREFIX + group["name"]
        for rule in group["rules"]:
            if "record" in rule:
                rule["record"] = COMPARE_PREFIX + rule["record"]
            if recorded:
                rule["expr"] = pattern.sub(lambda m: COMPARE_PREFIX + m.group(1), rule["expr"])
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _rule_name(rule: Mapping[str, Any]) -> str:
    return str(rule["name"])


class EvaluationLog:
    """Each group's and rule's evaluation times, one per evaluation, from ``/api/v1/rules``
    answers; evaluations already done at the first answer are left out."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str, str]] = set()
        self._started = False
        self.groups: dict[str, list[float]] = {}
        self.rules: dict[str, dict[str, list[float]]] = {}
        """Group -> rule -> seconds."""
        self.errors: dict[str, str] = {}
        """Rule -> the last error of an evaluation that failed."""

    def observe(self, groups: Iterable[Mapping[str, Any]]) -> None:
        """Take one ``/api/v1/rules`` answer's groups."""
        for group in groups:
            name = str(group["name"])
            self._add(name, "", group, self.groups.setdefault(name, []))
            rules = self.rules.setdefault(name, {})
            for rule in group["rules"]:
                self._add(name, _rule_name(rule), rule, rules.setdefault(_rule_name(rule), []))
                if rule.get("health") == "err":
                    self.errors[f"{name}/{_rule_name(rule)}"] = str(rule.get("lastError", ""))
        self._started = True

    def _add(self, group: str, rule: str, entry: Mapping[str, Any], into: list[float]) -> None:
        key = (group, rule, str(entry.get("lastEvaluation", "")))
        if key in self._seen:
            return
        self._seen.add(key)
        if self._started and not str(entry.get("lastEvaluation", "")).startswith("0001-"):
            into.append(float(entry["evaluationTime"]))


def seconds_summary(values: list[float]) -> dict[str, float]:
    """Median, maximum and count of evaluation times."""
    return {"p50": statistics.median(values), "max": max(values), "n": float(len(values))}


def summarise(log: EvaluationLog) -> dict[str, Any]:
    """Per group and per rule medians, and every group's median as a multiple of the
    reference group's and of the inputs group's."""
    groups = {name: seconds_summary(v) for name, v in log.groups.items() if v}
    rules = {
        group: {rule: seconds_summary(v) for rule, v in by_rule.items() if v}
        for group, by_rule in log.rules.items()
    }
    result: dict[str, Any] = {
        "rule_group_seconds": groups,
        "rule_seconds_by_group": rules,
        "rule_errors": dict(log.errors),
    }
    for key, base in (("ratio_to_reference", REFERENCE_GROUP), ("ratio_to_inputs", INPUTS_GROUP)):
        if base in groups and groups[base]["p50"] > 0:
            result[key] = {
                name: summary["p50"] / groups[base]["p50"] for name, summary in groups.items()
            }
    return result
