"""The whole chain: guest -> qemu-ga -> libvirt -> guestload -> Prometheus -> Alertmanager.

The tests run in file order and share the session's VMs; the destructive ones (agents
killed or frozen, a VM destroyed, libvirtd killed) come last and touch only their own VM
or restore what they broke.
"""

from __future__ import annotations

import time

import pytest

from guestload_lab.services import Exporter, Monitoring
from guestload_lab.vm import VmSpec
from guestload_lab.waiting import wait_until
from tests.e2e.lab import (
    LATE_SPEC,
    NAMESPACE,
    NODE,
    PLAIN_NAMESPACE,
    Lab,
)

pytestmark = pytest.mark.e2e

POLL_INTERVAL = 5.0
"""``--collector.interval`` of the exporter under test."""
AGENT_TIMEOUT = 2.0
"""``--collector.agent-timeout`` of the exporter under test."""
ONE_POLL = POLL_INTERVAL + AGENT_TIMEOUT + 3.0
"""A poll, its slowest agent call, and slack for scraping on a busy 2-core host."""

LOAD_SERIES = (
    "kubevirt_vmi_guest_load_1m",
    "kubevirt_vmi_guest_load_5m",
    "kubevirt_vmi_guest_load_15m",
)


def labels_of(spec: VmSpec) -> dict[str, str]:
    """The namespace/name/node labels the exporter gives ``spec``'s domain."""
    if spec.kubevirt_uid is not None:
        namespace, _, name = spec.name.partition("_")
        return {"namespace": namespace, "name": name, "node": NODE}
    return {"namespace": PLAIN_NAMESPACE, "name": spec.name, "node": NODE}


def exported_load(exporter: Exporter, spec: VmSpec) -> float | None:
    samples = exporter.samples("kubevirt_vmi_guest_load_1m", **labels_of(spec))
    assert len(samples) <= 1, samples
    return samples[0].value if samples else None


def agent_state(exporter: Exporter, spec: VmSpec) -> str | None:
    """The ``state`` label of the VM's load-query ``guestload_agent_state`` series at 1."""
    states = [
        sample.labels["state"]
        for sample in exporter.samples("guestload_agent_state", query="load", **labels_of(spec))
        if sample.value == 1.0
    ]
    assert len(states) <= 1, states
    return states[0] if states else None


def libvirt_up(exporter: Exporter) -> float:
    (sample,) = exporter.samples("guestload_libvirt_up")
    return sample.value


def assert_stays_fresh(exporter: Exporter, spec: VmSpec, seconds: float) -> None:
    """For ``seconds``: every scrape has ``spec``'s load and a poll that finished on time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert exported_load(exporter, spec) is not None, f"{spec.name} lost its load series"
        (last_success,) = exporter.samples("guestload_last_poll_success_timestamp_seconds")
        age = time.time() - last_success.value
        assert age <= ONE_POLL, f"last successful poll is {age:.1f} s old"
        time.sleep(1.0)


def test_idle_vm_has_load_series_with_its_identity(lab: Lab, monitoring: Monitoring) -> None:
    spec = lab.vms["idle"].spec
    exporter = monitoring.exporter
    labels = labels_of(spec)
    assert labels == {"namespace": NAMESPACE, "name": "idle", "node": NODE}

    wait_until(
        lambda: exported_load(exporter, spec) is not None,
        timeout=ONE_POLL,
        what="idle VM's load series",
    )

    for series in LOAD_SERIES:
        (sample,) = exporter.samples(series, **labels)
        assert 0.0 <= sample.value < 3.0, sample
    assert agent_state(exporter, spec) == "ok"
    vcpu_ids = {
        sample.labels["id"]
        for sample in exporter.samples("kubevirt_vmi_vcpu_seconds_total", **labels)
    }
    assert vcpu_ids == {"0", "1"}


def test_prometheus_counts_the_vcpus_with_the_project_rules(
    lab: Lab, monitoring: Monitoring
) -> None:
    prometheus = monitoring.prometheus
    labels = labels_of(lab.vms["idle"].spec)
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())

    counts = wait_until(
        lambda: prometheus.query_values(f"kubevirt_vmi_vcpu_count{{{selector}}}") or None,
        timeout=30.0,
        what="kubevirt_vmi_vcpu_count recorded",
    )
    queue = prometheus.query_values(f"kubevirt_vmi_guest_vcpu_queue{{{selector}}}")

    assert list(counts.values()) == [2.0]
    assert list(queue.values()) == [0.0]


@pytest.mark.parametrize(
    ("key", "state"),
    [("no_channel", "not_configured"), ("old_agent", "unsupported"), ("silent", "not_connected")],
)
def test_vm_without_usable_agent_has_no_load_and_says_why(
    lab: Lab, monitoring: Monitoring, key: str, state: str
) -> None:
    spec = lab.vms[key].spec
    exporter = monitoring.exporter

    wait_until(
        lambda: agent_state(exporter, spec) == state,
        timeout=ONE_POLL,
        what=f"agent state {state} for {spec.name}",
    )

    for series in LOAD_SERIES:
        assert exporter.samples(series, **labels_of(spec)) == []
    assert exported_load(exporter, lab.vms["idle"].spec) is not None


def test_stress_raises_the_exported_load(lab: Lab, monitoring: Monitoring) -> None:
    spec = lab.vms["stress"].spec
    before = lab.load_before_stress["stress"]
    elapsed = time.monotonic() - lab.stress_started["stress"]

    risen = wait_until(
        lambda: (
            (load := exported_load(monitoring.exporter, spec)) is not None
            and load >= before + 2.0
            and load
        ),
        timeout=max(ONE_POLL, 120.0 - elapsed),
        interval=1.0,
        what=f"exported load_1m of {spec.name} 2 above {before:.2f}",
    )

    assert risen >= before + 2.0


def test_queue_alerts_fire_in_order_reach_the_webhook_and_resolve(
    lab: Lab, monitoring: Monitoring
) -> None:
    vm = lab.vms["heavy"]
    labels = labels_of(vm.spec)
    prometheus, webhook = monitoring.prometheus, monitoring.webhook
    since_stress = lab.stress_started["heavy"]
    budget = max(30.0, 180.0 - (time.monotonic() - since_stress))

    warning = webhook.wait_for_alert("GuestVCPUQueueHighWarning", timeout=budget, **labels)
    critical = webhook.wait_for_alert("GuestVCPUQueueHighCritical", timeout=budget, **labels)
    lab.timings["stress --cpu 32 to warning at webhook"] = warning["receivedAt"] - since_stress
    lab.timings["stress --cpu 32 to critical at webhook"] = critical["receivedAt"] - since_stress

    assert warning["receivedAt"] < critical["receivedAt"]
    assert warning["labels"]["severity"] == "warning"
    assert critical["labels"]["severity"] == "critical"
    assert critical["annotations"]["runbook_url"].endswith("GuestVCPUQueueHighCritical.md")
    assert prometheus.firing("GuestVCPUQueueHighCritical")
    assert all(
        alert["labels"]["name"] == "heavy"
        for alert in prometheus.firing("GuestVCPUQueueHighWarning")
    )

    vm.stop_stress()
    stopped = time.monotonic()
    webhook.wait_for_alert("GuestVCPUQueueHighCritical", status="resolved", timeout=120.0, **labels)
    webhook.wait_for_alert("GuestVCPUQueueHighWarning", status="resolved", timeout=180.0, **labels)
    lab.timings["stress stopped to both alerts resolved"] = time.monotonic() - stopped

    assert not prometheus.firing("GuestVCPUQueueHighWarning")


def test_vm_booted_later_appears_and_goes_when_destroyed(lab: Lab, monitoring: Monitoring) -> None:
    exporter = monitoring.exporter
    vm = lab.hypervisor.create(LATE_SPEC, lab.slim_image, log_dir=lab.directory / "serial")
    try:
        wait_until(
            lambda: exported_load(exporter, LATE_SPEC) is not None,
            timeout=60.0,
            interval=0.5,
            what="load series of a VM booted while the exporter runs",
        )
        lab.timings["boot to first exported load (one VM)"] = time.monotonic() - vm.created_at
    finally:
        vm.destroy()
    destroyed = time.monotonic()

    wait_until(
        lambda: not exporter.samples("guestload_agent_state", **labels_of(LATE_SPEC)),
        timeout=ONE_POLL,
        interval=0.5,
        what="every series of the destroyed VM gone",
    )

    assert exported_load(exporter, LATE_SPEC) is None
    assert time.monotonic() - destroyed <= ONE_POLL


@pytest.mark.parametrize(
    ("key", "signal_name", "states"),
    [
        ("killed", "KILL", {"not_connected"}),
        # libvirt's first call to a frozen agent returns no keys, later ones time out.
        ("frozen", "STOP", {"no_data", "timeout"}),
    ],
)
def test_lost_agent_drops_only_its_vm_series_within_one_poll(
    lab: Lab, monitoring: Monitoring, key: str, signal_name: str, states: set[str]
) -> None:
    exporter = monitoring.exporter
    vm = lab.vms[key]
    idle = lab.vms["idle"].spec
    assert exported_load(exporter, vm.spec) is not None

    vm.signal_agent(signal_name)
    signalled = time.monotonic()
    wait_until(
        lambda: exported_load(exporter, vm.spec) is None,
        timeout=ONE_POLL,
        interval=0.5,
        what=f"load series of {vm.name} gone after SIG{signal_name} to its agent",
    )

    assert time.monotonic() - signalled <= ONE_POLL
    assert agent_state(exporter, vm.spec) in states
    assert_stays_fresh(exporter, idle, seconds=2 * POLL_INTERVAL)
    assert exported_load(exporter, lab.vms["stress"].spec) is not None


def test_exporter_survives_libvirtd_crash_and_restart(lab: Lab, monitoring: Monitoring) -> None:
    exporter, prometheus = monitoring.exporter, monitoring.prometheus
    idle = lab.vms["idle"].spec

    lab.daemon.kill()
    wait_until(
        lambda: libvirt_up(exporter) == 0.0,
        timeout=ONE_POLL,
        interval=0.5,
        what="guestload_libvirt_up 0 after libvirtd was killed",
    )
    assert exported_load(exporter, idle) is None
    wait_until(
        lambda: prometheus.query_values('guestload_libvirt_up{job="guestload"} == 0') or None,
        timeout=ONE_POLL,
        what="Prometheus scraping guestload_libvirt_up 0",
    )

    lab.daemon.restart()
    restarted = time.monotonic()
    wait_until(
        lambda: libvirt_up(exporter) == 1.0 and exported_load(exporter, idle) is not None,
        timeout=30.0,
        interval=0.5,
        what="guestload reconnected with the idle VM's load back",
    )
    lab.timings["libvirtd restart to load series back"] = time.monotonic() - restarted

    assert lab.vms["idle"].is_running()
    outage = prometheus.query_values('min_over_time(guestload_libvirt_up{job="guestload"}[10m])')
    assert list(outage.values()) == [0.0]
