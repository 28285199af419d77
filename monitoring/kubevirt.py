"""The bundle's KubeVirt variant, for clusters whose virt-handler exports guest load itself.

From v1.6.4 (and v1.7.0) KubeVirt's virt-handler exports ``kubevirt_vmi_guest_load_*`` and its
PrometheusRule records a vCPU count and a queue and alerts on the queue with the alert names
guestload uses. The variant holds the same rules and alerts as ``guestload.rules.yml``, read
from whichever job exports the series, with four differences:

- the two records whose names KubeVirt also writes (the vCPU count and the queue) get names
  of guestload's own, so no series is written by two rules;
- the queue alerts keep KubeVirt's names and condition (the queue above the threshold, at
  once, whatever the cause; GuestIOStall names an I/O stall) and stand down for a VM while
  KubeVirt's alert of the same name has it above its threshold, so one alert per VM and
  condition fires whichever rule matches;
- every alert carries KubeVirt's ``operator_health_impact: none`` label;
- every KubeVirt series is read with the VM's namespace from ``exported_namespace`` where a
  scrape that does not honor labels moved it there (kubevirt-observability-controller v0.0.2
  exports virt-handler's guest series again with ``--enable-vmstats``, and its
  ServiceMonitor does so), so such a copy merges with virt-handler's instead of standing for
  a VM of the exporter's namespace.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from monitoring.dashboard import UID, render_dashboard
from monitoring.rules import (
    VCPU_COUNT,
    VCPU_QUEUE,
    AlertingRule,
    RecordingRule,
    RuleGroup,
    build_groups,
)
from monitoring.settings import Settings
from monitoring.yamltext import dump_yaml

DASHBOARD_UID: Final = f"{UID}-kubevirt"

RENAMED: Final[Mapping[str, str]] = {
    VCPU_COUNT: "namespace_name_node:guestload_vcpus:count",
    VCPU_QUEUE: "namespace_name_node:guestload_vcpu_queue:clamp_min",
}
"""guestload's records whose names KubeVirt records too, and the variant's names for them."""

KUBEVIRT_RECORDS: Final = frozenset(
    {
        "kubevirt_vmi_vcpu_count",  # v1.6.4 to v1.7.x
        "kubevirt_vmi_guest_vcpu_queue",  # v1.6.4 on; from v1.8.3 an alias
        "vmi:kubevirt_vmi_vcpu:count",  # v1.8.0 on
        "vmi:kubevirt_vmi_guest_queue_length:sum",  # v1.8.3 on
    }
)
"""KubeVirt's records about guest load (pkg/monitoring/rules/recordingrules)."""

KUBEVIRT_QUEUES: Final = (
    "kubevirt_vmi_guest_vcpu_queue",
    "vmi:kubevirt_vmi_guest_queue_length:sum",
)
"""What KubeVirt's queue alerts compare: the first up to v1.8.2, the second from v1.8.3."""

KUBEVIRT_THRESHOLDS: Final[Mapping[str, str]] = {
    "GuestVCPUQueueHighWarning": "10",
    "GuestVCPUQueueHighCritical": "20",
}
"""KubeVirt's queue alerts and their fixed thresholds (pkg/monitoring/rules/alerts/vms.go)."""

KUBEVIRT_LABELS: Final = (("operator_health_impact", "none"),)
"""The label KubeVirt puts on every alert besides severity, so routes treat both alike."""

VM_KEY: Final = "namespace, name"
"""What identifies a VM in every KubeVirt version's queue (v1.8.3 on drops node)."""

GROUP_PREFIX: Final = "guestload-kubevirt"

EXPORTED_NAMESPACE: Final = "exported_namespace"
"""Where Prometheus keeps a series' own ``namespace`` when its scrape sets the target's."""

_RAW_SERIES: Final = re.compile(
    r"(?<![\w:])(?:rate\((?P<range>(?P<ranged>kubevirt_vmi_\w+)(?:\{[^}]*\})?\[\w+\])\)"
    r"|(?P<instant>(?P<name>kubevirt_vmi_\w+)(?:\{[^}]*\})?(?: offset \w+)?)(?![\w:\[]))"
)
"""A KubeVirt series as the rules read it: ``rate(name{...}[w])`` or ``name{...} offset d``."""


def rename(expr: str) -> str:
    """*expr* with every metric of :data:`RENAMED` replaced by the variant's name."""
    for old, new in RENAMED.items():
        expr = re.sub(rf"(?<![\w:]){re.escape(old)}(?![\w:])", new, expr)
    return expr


def vm_namespace(expr: str) -> str:
    """*expr* with each KubeVirt series (not KubeVirt's records) in ``label_replace``, which
    sets ``namespace`` to ``exported_namespace`` where that is not empty."""

    def wrap(match: re.Match[str]) -> str:
        name = match["ranged"] or match["name"]
        if name in KUBEVIRT_RECORDS:
            return match[0]
        inner = f"rate({match['range']})" if match["range"] else match["instant"]
        return f'label_replace({inner}, "namespace", "$1", "{EXPORTED_NAMESPACE}", "(.+)")'

    return _RAW_SERIES.sub(wrap, expr)


def kubevirt_alert_fires(alert: str) -> str:
    """The VMs for which KubeVirt's *alert* is above its threshold, in any version."""
    threshold = KUBEVIRT_THRESHOLDS[alert]
    queues = "\n  or\n".join(f"    {queue} > {threshold}" for queue in KUBEVIRT_QUEUES)
    return f"(\n{queues}\n)"


def _queue_alert(alert: str, settings: Settings) -> str:
    """KubeVirt's condition for *alert* on the variant's queue, unless KubeVirt's alert has
    the VM: the same VMs fire whichever rule matches, once each."""
    queue = RENAMED[VCPU_QUEUE]
    threshold = settings.alert(alert).threshold("queue")
    return f"{queue} > {threshold}\n  unless on ({VM_KEY})\n{kubevirt_alert_fires(alert)}"


def build_kubevirt_groups(settings: Settings) -> tuple[RuleGroup, ...]:
    """Every rule group of the KubeVirt variant."""
    groups = []
    for group in build_groups(settings):
        rules: list[RecordingRule | AlertingRule] = []
        for rule in group.rules:
            if isinstance(rule, RecordingRule):
                rules.append(
                    RecordingRule(
                        record=RENAMED.get(rule.record, rule.record),
                        expr=vm_namespace(rename(rule.expr)),
                    )
                )
                continue
            expr = vm_namespace(rename(rule.expr))
            if rule.alert in KUBEVIRT_THRESHOLDS:
                expr = _queue_alert(rule.alert, settings)
            rules.append(
                AlertingRule(
                    alert=rule.alert,
                    expr=expr,
                    for_=rule.for_,
                    severity=rule.severity,
                    summary=rule.summary,
                    description=rule.description,
                    runbook_url=rule.runbook_url,
                    extra_labels=(*rule.extra_labels, *KUBEVIRT_LABELS),
                )
            )
        _, _, suffix = group.name.partition(".")
        groups.append(RuleGroup(name=f"{GROUP_PREFIX}.{suffix}", rules=rules))
    recorded = {
        rule.record for group in groups for rule in group.rules if isinstance(rule, RecordingRule)
    }
    if recorded & KUBEVIRT_RECORDS:
        raise ValueError(
            f"the KubeVirt variant records KubeVirt's {sorted(recorded & KUBEVIRT_RECORDS)}"
        )
    return tuple(groups)


def render_kubevirt_rule_file(groups: Sequence[RuleGroup]) -> str:
    """The plain Prometheus rule file of the KubeVirt variant."""
    return dump_yaml(
        {"groups": [group.document() for group in groups]},
        header=(
            "Generated by `python -m monitoring.generate` from monitoring/config.yml: edit that\n"
            "file (thresholds), monitoring/rules.py (expressions) or monitoring/kubevirt.py\n"
            "(what differs on KubeVirt), never this one.\n"
            "For KubeVirt >= 1.6.4, whose virt-handler exports guest load and whose own rules\n"
            "record a queue: load it instead of guestload.rules.yml (docs/operators/kubevirt.md)."
        ),
    )


def render_kubevirt_dashboard(settings: Settings) -> str:
    """The dashboard for the variant: the same panels, reading the variant's record names."""
    dashboard = json.loads(render_dashboard(settings))
    dashboard["uid"] = DASHBOARD_UID
    dashboard["title"] += " (KubeVirt >= 1.6.4)"
    return json.dumps(_renamed_queries(dashboard), indent=2, ensure_ascii=False) + "\n"


def _renamed_queries(node: Any) -> Any:
    """*node* (a part of Grafana's JSON model) with the metrics of its queries renamed."""
    if isinstance(node, dict):
        return {
            key: rename(value)
            if key in {"expr", "query"} and isinstance(value, str)
            else _renamed_queries(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_renamed_queries(item) for item in node]
    return node
