"""A KubeVirt cluster's guest-load series for the coexistence tests, and KubeVirt's own rules.

KubeVirt's rules are stored verbatim under ``tests/monitoring/kubevirt/``, one file per
release, each naming the repository, tag and source files it comes from: KubeVirt's own
(``kubevirt-<tag>``) and kubevirt-observability-controller's, which ships them apart from
KubeVirt (``kubevirt-observability-controller-<tag>``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.monitoring.monitoring_bundle import MONITORING

FIXTURES = Path(__file__).resolve().parent / "kubevirt"
KUBEVIRT_RULES = {
    version: FIXTURES / f"kubevirt-{version}.rules.yml"
    for version in ("v1.7.0", "v1.8.0", "v1.9.0", "observability-controller-v0.0.2")
}
"""KubeVirt's guest-queue rules per release; v1.6.4 equals v1.7.0, v1.8.3 equals v1.9.0, and
the observability controller's v0.0.2 has v1.9.0's (in another order)."""
NODELESS_QUEUE = "vmi:kubevirt_vmi_guest_queue_length:sum"
"""The queue KubeVirt's alerts compare from v1.8.3 on: summed by name and namespace only."""
VARIANT_RULES = MONITORING / "rules" / "guestload-kubevirt.rules.yml"
QUEUE_ALERTS = ("GuestVCPUQueueHighWarning", "GuestVCPUQueueHighCritical")

VIRT_HANDLER_JOB = "kubevirt-prometheus-metrics"
"""The job of virt-handler's series: KubeVirt's ServiceMonitor scrapes the Service of that name."""
VIRT_HANDLER_TARGET = {
    "job": VIRT_HANDLER_JOB,
    "instance": "10.128.2.15:8443",
    "pod": "virt-handler-7xk2p",
    "container": "virt-handler",
    "endpoint": "metrics",
    "service": VIRT_HANDLER_JOB,
}
"""The target labels a Prometheus Operator scrape (honorLabels: true) adds to virt-handler's
series."""

CONTROLLER_JOB = "virt-observability-controller-metrics"
"""The job of kubevirt-observability-controller's series (its self-managed Service)."""
CONTROLLER_TARGET = {
    "job": CONTROLLER_JOB,
    "instance": "10.128.4.7:8443",
    "namespace": "virt-observability-controller-system",
    "pod": "virt-observability-controller-5d9c7-kq2xz",
    "container": "manager",
    "endpoint": "metrics",
    "service": CONTROLLER_JOB,
}
"""The target labels a Prometheus Operator scrape adds to the controller's series: its
ServiceMonitor (pkg/controller/metricsresources_controller.go at v0.0.2) does not honor labels,
so the VM's ``namespace`` becomes ``exported_namespace``."""


@dataclass(frozen=True, slots=True)
class GuestVM:
    """A VM as virt-handler reports it, with what its queue alerts should do."""

    name: str
    vcpus: int
    load_1m: float
    busy_share: float
    """Share of each vCPU's time it runs (host view) and the guest's busy share."""
    iowait_share: float = 0.0
    namespace: str = "shop"
    node: str = "node-a"

    @property
    def queue(self) -> float:
        return max(self.load_1m - self.vcpus, 0.0)

    def vm_labels(self) -> dict[str, str]:
        """The labels virt-handler puts on each of the VM's series."""
        return {
            "namespace": self.namespace,
            "name": self.name,
            "node": self.node,
            "kubernetes_vmi_label_kubevirt_io_domain": self.name,
            "kubernetes_vmi_label_vm_kubevirt_io_name": self.name,
        }


VMS = (
    GuestVM(name="hot", vcpus=2, load_1m=25.0, busy_share=0.95),
    GuestVM(name="warm", vcpus=4, load_1m=16.0, busy_share=0.9),
    GuestVM(name="calm", vcpus=2, load_1m=1.5, busy_share=0.4),
    GuestVM(name="stalled", vcpus=1, load_1m=12.0, busy_share=0.01, iowait_share=0.95),
)
"""Queues 23 (both alerts), 12 (warning), 0 (none) and 11 blocked on I/O (warning, and
GuestIOStall after 5m)."""


def expected_queue_alerts(vms: tuple[GuestVM, ...] = VMS) -> dict[tuple[str, str, str], int]:
    """(namespace, name, alertname) -> 1 for each queue above KubeVirt's thresholds (10, 20),
    whatever its cause: one alert per VM and condition, from either rule file."""
    expected = {}
    for vm in vms:
        if vm.queue > 10:
            expected[(vm.namespace, vm.name, "GuestVCPUQueueHighWarning")] = 1
        if vm.queue > 20:
            expected[(vm.namespace, vm.name, "GuestVCPUQueueHighCritical")] = 1
    return expected


def metric_lines(
    vm: GuestVM, *, seconds: float, target: Mapping[str, str], bare: bool = False
) -> Iterator[tuple[str, dict[str, str], float]]:
    """virt-handler's samples of *vm* after *seconds* of steady work, with *target* labels;
    *bare*: only namespace, name and node, as KubeVirt's own rule tests write them."""
    base = {"namespace": vm.namespace, "name": vm.name, "node": vm.node} if bare else {}
    base = base or {**vm.vm_labels(), **target}
    for window in ("1m", "5m", "15m"):
        yield f"kubevirt_vmi_guest_load_{window}", base, vm.load_1m
    for vcpu in range(vm.vcpus):
        yield (
            "kubevirt_vmi_vcpu_seconds_total",
            {**base, "id": str(vcpu), "state": "running"},
            seconds * vm.busy_share,
        )
        yield "kubevirt_vmi_vcpu_delay_seconds_total", {**base, "id": str(vcpu)}, seconds * 0.01
        yield "kubevirt_vmi_vcpu_wait_seconds_total", {**base, "id": str(vcpu)}, 0.0


def controller_vmstats_lines(
    vm: GuestVM, *, seconds: float
) -> Iterator[tuple[str, dict[str, str], float]]:
    """The controller's copy of virt-handler's samples of *vm* (``--enable-vmstats``), as
    stored after its scrape: the VM's namespace moved to ``exported_namespace``."""
    for name, labels, value in metric_lines(vm, seconds=seconds, target={}):
        moved = {**labels, "exported_namespace": labels["namespace"], **CONTROLLER_TARGET}
        yield name, moved, value


def guest_cpu_lines(
    vm: GuestVM, *, seconds: float, target: Mapping[str, str]
) -> Iterator[tuple[str, dict[str, str], float]]:
    """guestload's guest CPU time of *vm* (its DaemonSet with --no-collector.load)."""
    labels = {"namespace": vm.namespace, "name": vm.name, "node": vm.node, **target}
    total = seconds * vm.vcpus
    busy = total * vm.busy_share
    iowait = total * vm.iowait_share
    for mode, value in (("user", busy), ("iowait", iowait), ("idle", total - busy - iowait)):
        yield "guestload_guest_cpu_seconds_total", {**labels, "mode": mode}, value


def selector(name: str, labels: Mapping[str, str]) -> str:
    """``name{label="value", ...}`` in PromQL and exposition syntax."""
    inner = ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def recorded_names(path: Path) -> list[str]:
    """The names the recording rules of rule file *path* write, one entry per rule."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [
        rule["record"]
        for group in document["groups"]
        for rule in group["rules"]
        if "record" in rule
    ]


def queue_alerts_keep_node(path: Path) -> bool:
    """Whether the queue alerts of KubeVirt's rule file *path* carry the VM's ``node``."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    exprs = [
        rule["expr"]
        for group in document["groups"]
        for rule in group["rules"]
        if rule.get("alert") in QUEUE_ALERTS
    ]
    assert len(exprs) == len(QUEUE_ALERTS), path.name
    return not any(NODELESS_QUEUE in expr for expr in exprs)


def kubevirt_recorded_names() -> dict[str, list[str]]:
    """Every name each KubeVirt release (and observability controller release) records,
    extracted from its sources."""
    names: dict[str, list[str]] = yaml.safe_load(
        (FIXTURES / "recorded-names.yml").read_text(encoding="utf-8")
    )
    return names
