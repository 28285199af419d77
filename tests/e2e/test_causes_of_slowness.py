"""The lab's three causes of a slow VM, read directly from libvirt and the guest agent.

A guest blocked on I/O, a CPU-bound guest and two busy guests pinned to one host CPU share
one set of four VMs, booted for this module. The file sorts before the scenarios on purpose:
its VMs run and are gone before the session's VMs boot, so the vCPU shares measured here
see no other guest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from guestload_lab.image import GuestImage
from guestload_lab.libvirtd import PrivateLibvirtd
from guestload_lab.vm import Hypervisor, LabVm, VcpuSample, VmSpec, wait_all_agents
from guestload_lab.waiting import wait_until

pytestmark = pytest.mark.e2e

QUEUE_LOAD = 11.0
"""load.1m above 10 tasks per vCPU in a 1-vCPU guest."""
WORKERS = 32
"""Disk readers or stress-ng workers. In a 1-vCPU TCG guest 16 of either take ~70 s to pass
a load.1m of 11; 32 take ~31 s."""
DISK_IOPS = 5
PINNED_WORKERS = 4
WINDOW_SECONDS = 10.0
"""Shortest span a vCPU share is measured over."""


@dataclass(frozen=True, slots=True)
class Baseline:
    """What a VM's counters were when its load generator started."""

    started: float
    vcpu: VcpuSample
    cpu_stats: list[dict[str, Any]]


@dataclass
class Causes:
    io_stalled: LabVm
    cpu_bound: LabVm
    pinned: tuple[LabVm, LabVm]
    baselines: dict[str, Baseline]
    timings: dict[str, float]


def _start(vm: LabVm, begin_load: Callable[[], object]) -> Baseline:
    vcpu, stats = vm.vcpu_sample(), vm.cpu_stats()
    begin_load()
    return Baseline(started=time.monotonic(), vcpu=vcpu, cpu_stats=stats)


def _gained(before: list[dict[str, Any]], after: list[dict[str, Any]], counter: str) -> int:
    """Milliseconds ``counter`` grew by over every guest CPU."""
    return sum(
        int(late[counter]) - int(early[counter]) for early, late in zip(before, after, strict=True)
    )


def _wait_queue_load(vm: LabVm, baseline: Baseline) -> float:
    """Wait until load.1m passes ``QUEUE_LOAD``; seconds since the load generator started."""
    budget = 150.0 - (time.monotonic() - baseline.started)
    wait_until(
        lambda: vm.guest_load()["load.1m"] > QUEUE_LOAD,
        timeout=max(budget, 5.0),
        interval=2.0,
        what=f"load.1m of {vm.name} above {QUEUE_LOAD}",
        detail=lambda: f"load: {vm.guest_load()}",
    )
    return time.monotonic() - baseline.started


@pytest.fixture(scope="module")
def causes(
    daemon: PrivateLibvirtd,
    guest_images: tuple[GuestImage, GuestImage],
    lab_dir: Path,
    timings: dict[str, float],
) -> Iterator[Causes]:
    """Boots the four VMs, then starts the disk readers and the CPU stress together."""
    full, slim = guest_images
    specs = {
        "io_stalled": (VmSpec(name="io-stalled", disk_iops=DISK_IOPS), slim),
        "cpu_bound": (VmSpec(name="cpu-bound"), full),
        "pinned_a": (VmSpec(name="pinned-a", host_cpu=0), full),
        "pinned_b": (VmSpec(name="pinned-b", host_cpu=0), full),
    }
    with Hypervisor(daemon.uri) as hypervisor:
        vms: dict[str, LabVm] = {}
        try:
            started = time.monotonic()
            for key, (spec, image) in specs.items():
                vms[key] = hypervisor.create(spec, image, log_dir=lab_dir / "causes")
            wait_all_agents(vms.values(), timeout=180.0)
            timings["boot 4 VMs for the causes of slowness"] = time.monotonic() - started
            io_stalled, cpu_bound = vms["io_stalled"], vms["cpu_bound"]
            baselines = {
                io_stalled.name: _start(io_stalled, lambda: io_stalled.start_disk_readers(WORKERS)),
                cpu_bound.name: _start(cpu_bound, lambda: cpu_bound.start_stress(WORKERS)),
            }
            yield Causes(
                io_stalled=io_stalled,
                cpu_bound=cpu_bound,
                pinned=(vms["pinned_a"], vms["pinned_b"]),
                baselines=baselines,
                timings=timings,
            )
        finally:
            for vm in vms.values():
                vm.destroy()


def test_pinned_busy_guests_wait_for_their_host_cpu(causes: Causes) -> None:
    pinned = causes.pinned
    for vm in pinned:
        vm.start_stress(PINNED_WORKERS)
    try:
        time.sleep(2.0)  # stress-ng's workers up
        before = [(vm.vcpu_sample(), vm.cpu_stats()) for vm in pinned]
        time.sleep(WINDOW_SECONDS)
        after = [(vm.vcpu_sample(), vm.cpu_stats()) for vm in pinned]
    finally:
        for vm in pinned:
            vm.stop_stress()

    shares = []
    for vm, (vcpu, stats), (later_vcpu, later_stats) in zip(pinned, before, after, strict=True):
        assert vcpu.delay_ratio(later_vcpu) > 0.3, vm.name
        # Under TCG the guest cannot see the contention: it reports no steal time.
        assert _gained(stats, later_stats, "steal") == 0, vm.name
        shares.append(vcpu.busy_share(later_vcpu))
    assert sum(shares) < 1.05, "two pinned vCPUs ran more than one host CPU's time"


def test_io_stalled_guest_queues_on_the_disk_while_its_vcpu_idles(causes: Causes) -> None:
    vm = causes.io_stalled
    baseline = causes.baselines[vm.name]

    seconds = _wait_queue_load(vm, baseline)
    vcpu, stats = vm.vcpu_sample(), vm.cpu_stats()
    causes.timings["32 disk readers: load.1m > 11 after"] = seconds

    assert baseline.vcpu.busy_share(vcpu) < 0.10
    elapsed_ms = (vcpu.at - baseline.vcpu.at) * 1000
    assert _gained(baseline.cpu_stats, stats, "iowait") > 0.5 * elapsed_ms
    time.sleep(2.0)
    assert _gained(stats, vm.cpu_stats(), "iowait") > 0


def test_cpu_bound_guest_keeps_its_vcpu_busy(causes: Causes) -> None:
    vm = causes.cpu_bound
    baseline = causes.baselines[vm.name]
    first = vm.vcpu_sample()

    seconds = _wait_queue_load(vm, baseline)
    causes.timings["stress-ng --cpu 32: load.1m > 11 after"] = seconds
    time.sleep(max(0.0, WINDOW_SECONDS - (time.monotonic() - first.at)))
    share = first.busy_share(vm.vcpu_sample())

    assert share > 0.80
