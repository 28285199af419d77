"""Measure the three causes of a slow VM on real guests: ``python -m guestload_lab.causes``.

Boots at most four tiny VMs at a time under a private libvirt daemon and prints, as plain
text: which agents answer ``guest-get-cpustats``; the cost of that passthrough call against
``guestInfo(LOAD)`` on a 1- and a 2-vCPU guest; the taint libvirt logs for passthrough; how an
I/O-stalled guest and a CPU-bound guest reach a load above 11 (time, vCPU busy share, guest
CPU counters); and the vCPU delay of two busy guests pinned to one host CPU. Shares and
costs depend on whatever else runs on the host: measure on a quiet one. A guest blocked on no
disk (a hung FUSE mount) is measured by ``python -m guestload_lab.blocked``, a guest in a swap
storm by ``python -m guestload_lab.memory``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu

from guestload_lab.deps import ensure_dependencies
from guestload_lab.image import GuestImage, build_image
from guestload_lab.libvirtd import PrivateLibvirtd
from guestload_lab.vm import AgentKind, Hypervisor, LabVm, VcpuSample, VmSpec, wait_all_agents
from guestload_lab.waiting import wait_until

LOAD_THRESHOLD = 11.0
"""load.1m above 10 + 1 vCPU: a queue of more than 10 tasks per vCPU."""
COST_CALLS = 250
CPUSTATS_REQUEST = '{"execute":"guest-get-cpustats"}'
COUNTERS = ("user", "system", "idle", "iowait", "steal")


def counter_deltas(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> str:
    """``user``/``system``/``idle``/``iowait``/``steal`` gained between two cpustats, summed."""
    gained = {
        name: sum(
            int(late[name]) - int(early[name]) for early, late in zip(before, after, strict=True)
        )
        for name in COUNTERS
    }
    return " ".join(f"{name} +{value} ms" for name, value in gained.items())


def percentiles(samples: Sequence[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"median {statistics.median(ordered) * 1e3:.2f} ms, p90 {p90 * 1e3:.2f} ms"


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def log_lines(path: Path, text: str) -> list[str]:
    try:
        return [line for line in path.read_text(errors="replace").splitlines() if text in line]
    except FileNotFoundError:
        return []


def wait_load_via_guest_info(vm: LabVm) -> None:
    """Wait until ``guestInfo(LOAD)`` answers, without any passthrough call (which taints)."""

    def answers() -> bool:
        try:
            return bool(vm.guest_load())
        except libvirt.libvirtError:
            return False

    wait_until(answers, timeout=120.0, interval=0.5, what=f"{vm.name} guestInfo(LOAD)")


@contextmanager
def booted(
    hypervisor: Hypervisor, specs: Sequence[tuple[VmSpec, GuestImage]], log_dir: Path
) -> Iterator[list[LabVm]]:
    vms: list[LabVm] = []
    try:
        for spec, image in specs:
            vms.append(hypervisor.create(spec, image, log_dir=log_dir))
        yield vms
    finally:
        for vm in vms:
            vm.destroy()


def measure_agents_cost_and_taint(
    hypervisor: Hypervisor, daemon: PrivateLibvirtd, slim: GuestImage, log_dir: Path
) -> None:
    specs = [
        (VmSpec(name="idle-1vcpu"), slim),
        (VmSpec(name="idle-2vcpu", vcpus=2), slim),
        (VmSpec(name="old-agent", agent=AgentKind.OLD), slim),
    ]
    with booted(hypervisor, specs, log_dir) as (one, two, old):
        wait_load_via_guest_info(one)
        wait_all_agents([two, old], timeout=120.0)
        print("== a. guest-get-cpustats per agent")
        for vm in (two, old):
            try:
                print(f"{vm.name}: {json.dumps(vm.cpu_stats())}")
            except libvirt.libvirtError as error:
                print(f"{vm.name}: error {error.get_error_code()} {error}")

        print("== c. taint of passthrough (idle-1vcpu, no passthrough before)")
        daemon_log = daemon.log_dir / "libvirtd.log"
        domain_log = daemon.log_dir / "qemu" / f"{one.name}.log"
        print(f"before: daemon {len(log_lines(daemon_log, 'tainted'))} tainted lines")
        domain = one.domain()
        libvirt_qemu.qemuAgentCommand(domain, CPUSTATS_REQUEST, 5, 0)
        for path in (daemon_log, domain_log):
            print(f"after 1 call, {path.name}:", *log_lines(path, "tainted"), sep="\n  ")

        print("== b. cost, interleaved, idle guests")
        costs: dict[str, list[float]] = {}
        for vm in (one, two):
            domain = vm.domain()
            calls: dict[str, Callable[[], object]] = {
                f"{vm.name} passthrough cpustats": partial(
                    libvirt_qemu.qemuAgentCommand, domain, CPUSTATS_REQUEST, 5, 0
                ),
                f"{vm.name} guestInfo(LOAD)": partial(
                    domain.guestInfo, libvirt.VIR_DOMAIN_GUEST_INFO_LOAD, 0
                ),
            }
            for _ in range(COST_CALLS):
                for name, call in calls.items():
                    costs.setdefault(name, []).append(timed(call))
        for name, samples in costs.items():
            print(f"{name:<36} {len(samples)} calls: {percentiles(samples)}")
        taint = f"name='{one.name}' uuid={one.uuid} is tainted: custom-ga-command"
        print(
            f"after {1 + COST_CALLS} passthrough calls to {one.name}:"
            f" {len(log_lines(daemon_log, taint))} custom-ga-command line(s) in {daemon_log.name},"
            f" {len(log_lines(domain_log, 'custom-ga-command'))} in {domain_log.name}"
        )


def measure_causes(
    hypervisor: Hypervisor, full: GuestImage, slim: GuestImage, log_dir: Path
) -> None:
    specs = [
        (VmSpec(name="io-stalled", disk_iops=5), slim),
        (VmSpec(name="cpu-bound"), full),
        (VmSpec(name="pinned-a", host_cpu=0), full),
        (VmSpec(name="pinned-b", host_cpu=0), full),
    ]
    with booted(hypervisor, specs, log_dir) as (io_vm, cpu_vm, pinned_a, pinned_b):
        wait_all_agents([io_vm, cpu_vm, pinned_a, pinned_b], timeout=180.0)
        print("== d/e. I/O-stalled guest (16 disk readers) and CPU-bound guest (stress-ng 16)")
        start: dict[str, tuple[float, VcpuSample, list[dict[str, Any]], float]] = {}
        for vm, begin in (
            (io_vm, io_vm.start_disk_readers),
            (cpu_vm, lambda: cpu_vm.start_stress(16)),
        ):
            load = vm.guest_load()["load.1m"]
            begin()
            start[vm.name] = (time.monotonic(), vm.vcpu_sample(), vm.cpu_stats(), load)
        pending = {io_vm.name: io_vm, cpu_vm.name: cpu_vm}
        while pending:
            time.sleep(2.0)
            for name, vm in list(pending.items()):
                load = vm.guest_load()["load.1m"]
                began, vcpu, stats, load_before = start[name]
                if load > LOAD_THRESHOLD or time.monotonic() - began > 240:
                    now_vcpu, now_stats = vm.vcpu_sample(), vm.cpu_stats()
                    print(
                        f"{name}: load.1m {load_before:.2f} -> {load:.2f} in"
                        f" {time.monotonic() - began:.1f} s; busy share"
                        f" {vcpu.busy_share(now_vcpu):.3f}; {counter_deltas(stats, now_stats)}"
                    )
                    del pending[name]
        io_vm.stop_disk_readers()
        cpu_vm.stop_stress()
        time.sleep(5.0)
        _, left = io_vm.run_in_guest(["/bin/busybox", "sh", "-c", "pidof dd | wc -w"])
        print(f"{io_vm.name}: {left.strip()} dd process(es) left 5 s after stop_disk_readers")

        print("== f. two busy guests pinned to host CPU 0, one unpinned busy guest")
        for vm in (pinned_a, pinned_b, cpu_vm):
            vm.start_stress(4)
        time.sleep(3.0)
        before = {
            vm.name: (vm.vcpu_sample(), vm.cpu_stats()) for vm in (pinned_a, pinned_b, cpu_vm)
        }
        time.sleep(10.0)
        for vm in (pinned_a, pinned_b, cpu_vm):
            vcpu, stats = before[vm.name]
            now_vcpu, now_stats = vm.vcpu_sample(), vm.cpu_stats()
            print(
                f"{vm.name}: over {now_vcpu.at - vcpu.at:.1f} s busy share"
                f" {vcpu.busy_share(now_vcpu):.3f}, delay ratio {vcpu.delay_ratio(now_vcpu):.3f};"
                f" {counter_deltas(stats, now_stats)}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guestload_lab.causes", description=__doc__)
    parser.parse_args(argv)
    parts = ensure_dependencies()
    full, slim = build_image(parts), build_image(parts, with_stress=False)
    workdir = Path(tempfile.mkdtemp(prefix="gl-causes-", dir="/tmp"))
    with PrivateLibvirtd(workdir=workdir / "libvirt") as daemon, Hypervisor(daemon.uri) as hv:
        measure_agents_cost_and_taint(hv, daemon, slim, workdir / "serial")
        measure_causes(hv, full, slim, workdir / "serial")
    print(f"logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
