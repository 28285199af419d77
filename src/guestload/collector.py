"""Snapshot -> Prometheus metric families. Pure: it reads only the snapshot it is given."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from guestload import __version__
from guestload.model import AgentState, Snapshot

VM_LABELS = ("namespace", "name", "node")
VCPU_LABELS = (*VM_LABELS, "id")

LOAD_HELP = (
    "Guest load average over {window}, as the guest kernel counts it (runnable plus "
    "uninterruptible tasks), read from the QEMU guest agent (guest-get-load) at each poll."
)


def metric_families(snapshot: Snapshot, *, vcpu_collector: bool) -> list[Metric]:
    """Every family guestload exports for ``snapshot``, in exposition order."""
    load_1m = GaugeMetricFamily(
        "kubevirt_vmi_guest_load_1m", LOAD_HELP.format(window="1 minute"), labels=VM_LABELS
    )
    load_5m = GaugeMetricFamily(
        "kubevirt_vmi_guest_load_5m", LOAD_HELP.format(window="5 minutes"), labels=VM_LABELS
    )
    load_15m = GaugeMetricFamily(
        "kubevirt_vmi_guest_load_15m", LOAD_HELP.format(window="15 minutes"), labels=VM_LABELS
    )
    agent_state = GaugeMetricFamily(
        "guestload_agent_state",
        "Outcome of the last guest-load call for a running VM: 1 for the current state "
        "(ok, not_configured, not_connected, unsupported, timeout, no_data, invalid, busy, "
        "gone, error).",
        labels=(*VM_LABELS, "state"),
    )
    domain_info = GaugeMetricFamily(
        "guestload_domain_info",
        "The libvirt domain behind a running VM: its name and UUID (for OpenStack, the "
        "instance UUID). Always 1.",
        labels=(*VM_LABELS, "domain", "uuid"),
    )
    vcpu_seconds = CounterMetricFamily(
        "kubevirt_vmi_vcpu_seconds",
        "Cumulative time a vCPU ran, labelled with the vCPU's current state.",
        labels=(*VCPU_LABELS, "state"),
    )
    vcpu_delay = CounterMetricFamily(
        "kubevirt_vmi_vcpu_delay_seconds",
        "Cumulative time a vCPU was runnable but waited for a host CPU (host contention).",
        labels=VCPU_LABELS,
    )
    vcpu_wait = CounterMetricFamily(
        "kubevirt_vmi_vcpu_wait_seconds",
        "Cumulative time a vCPU waited for I/O.",
        labels=VCPU_LABELS,
    )
    for domain in snapshot.domains:
        vm = [domain.identity.namespace, domain.identity.name, domain.identity.node]
        agent_state.add_metric([*vm, domain.agent_state.value], 1.0)
        domain_info.add_metric([*vm, domain.domain_name, domain.uuid], 1.0)
        if domain.load is not None:
            load_1m.add_metric(vm, domain.load.one)
            load_5m.add_metric(vm, domain.load.five)
            load_15m.add_metric(vm, domain.load.fifteen)
        if not vcpu_collector:
            continue
        for vcpu in domain.vcpus:
            vcpu_id = [*vm, str(vcpu.id)]
            if vcpu.time_seconds is not None:
                vcpu_seconds.add_metric([*vcpu_id, vcpu.state.value], vcpu.time_seconds)
            if vcpu.delay_seconds is not None:
                vcpu_delay.add_metric(vcpu_id, vcpu.delay_seconds)
            if vcpu.wait_seconds is not None:
                vcpu_wait.add_metric(vcpu_id, vcpu.wait_seconds)

    families: list[Metric] = [load_1m, load_5m, load_15m, agent_state, domain_info]
    if vcpu_collector:
        families += [vcpu_seconds, vcpu_delay, vcpu_wait]
    families += list(_health_families(snapshot))
    return families


def _health_families(snapshot: Snapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "guestload_libvirt_up",
        "1 if the last poll reached libvirt, 0 if the connection is down.",
        value=1.0 if snapshot.source_up else 0.0,
    )
    yield GaugeMetricFamily(
        "guestload_domains",
        "Running domains found by the last successful poll.",
        value=float(len(snapshot.domains) + snapshot.identity_conflicts),
    )
    yield GaugeMetricFamily(
        "guestload_identity_conflicts",
        "Running domains not exported because another domain resolves to the same "
        "namespace, name and node (the log names them).",
        value=float(snapshot.identity_conflicts),
    )
    yield CounterMetricFamily(
        "guestload_polls", "Polls started.", value=float(snapshot.polls_total)
    )
    yield CounterMetricFamily(
        "guestload_poll_failures",
        "Polls that could not list domains (libvirt unreachable).",
        value=float(snapshot.poll_failures_total),
    )
    if snapshot.last_poll_duration_seconds is not None:
        yield GaugeMetricFamily(
            "guestload_poll_duration_seconds",
            "Wall time of the last poll, guest-agent calls included.",
            value=snapshot.last_poll_duration_seconds,
        )
    if snapshot.last_success_timestamp_seconds is not None:
        yield GaugeMetricFamily(
            "guestload_last_poll_success_timestamp_seconds",
            "Unix time at which the last successful poll finished.",
            value=snapshot.last_success_timestamp_seconds,
        )
    calls = CounterMetricFamily(
        "guestload_agent_calls",
        "Guest-load calls by outcome (the agent state they produced).",
        labels=("state",),
    )
    for state in AgentState:
        calls.add_metric([state.value], float(snapshot.agent_calls_total.get(state, 0)))
    yield calls
    info_labels = {"version": __version__, **snapshot.build_info}
    build_info = GaugeMetricFamily(
        "guestload_build_info",
        "Build and runtime facts; always 1.",
        labels=tuple(info_labels),
    )
    build_info.add_metric(list(info_labels.values()), 1.0)
    yield build_info


class SnapshotCollector(Collector):
    """A client_python collector over one fixed snapshot."""

    def __init__(self, snapshot: Snapshot, *, vcpu_collector: bool) -> None:
        self._snapshot = snapshot
        self._vcpu_collector = vcpu_collector

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self._snapshot, vcpu_collector=self._vcpu_collector)
