"""Measure a guest blocked on no disk on real guests: ``python -m guestload_lab.blocked``.

Boots two 1-vCPU slim guests (at most two VMs at a time) under a private libvirt daemon; in
one ``LabVm.start_blocked_tasks(16)``, in the other ``start_blocked_tasks(32)``: tasks waiting
for a FUSE daemon that never answers, in uninterruptible (killable) sleep, on no disk. Prints
as plain text: load.1m over time, when it passes 11 (and 21), the vCPU busy share from host
vCPU time and the ``guest-get-cpustats`` deltas over the same period, the tasks' states and
wait channels (with one kernel stack), and how the guest recovers after
``stop_blocked_tasks``. Shares depend on whatever else runs on the host: measure on a quiet one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guestload_lab.causes import LOAD_THRESHOLD, booted, counter_deltas
from guestload_lab.deps import ensure_dependencies
from guestload_lab.image import build_image
from guestload_lab.libvirtd import PrivateLibvirtd
from guestload_lab.vm import Hypervisor, LabVm, VcpuSample, VmSpec, wait_all_agents

SECOND_THRESHOLD = 21.0
"""load.1m above 20 + 1 vCPU: a queue of more than 20 tasks per vCPU."""
TASK_COUNTS = (16, 32)
DEFAULT_SECONDS = 150.0
SAMPLE_INTERVAL = 2.0
PRINT_EVERY = 15.0
SETTLE_LOAD = 1.0
"""Blocked tasks start once the boot's own load.1m has decayed below this."""


@dataclass
class Run:
    """One guest's measurement: its task count and what was sampled at the start."""

    vm: LabVm
    tasks: int
    load_before: float = 0.0
    began: float = 0.0
    vcpu: VcpuSample | None = None
    stats: list[dict[str, Any]] = field(default_factory=list)
    crossed: dict[float, float] = field(default_factory=dict)
    """Threshold -> seconds after the start when load.1m first passed it."""
    next_print: float = 0.0


def describe_period(run: Run, load: float) -> str:
    """load.1m, busy share and cpustats deltas from the run's start to now."""
    assert run.vcpu is not None
    now_vcpu, now_stats = run.vm.vcpu_sample(), run.vm.cpu_stats()
    return (
        f"load.1m {run.load_before:.2f} -> {load:.2f} in {now_vcpu.at - run.began:.1f} s;"
        f" busy share {run.vcpu.busy_share(now_vcpu):.3f}; {counter_deltas(run.stats, now_stats)}"
    )


def measure_blocked(runs: Sequence[Run], seconds: float) -> None:
    print(f"== g. guests blocked on no disk (hung FUSE mount), {seconds:g} s each")
    for run in runs:
        start(run)
    end = max(run.began for run in runs) + seconds
    while time.monotonic() < end:
        time.sleep(SAMPLE_INTERVAL)
        for run in runs:
            if time.monotonic() - run.began <= seconds:
                sample(run)
    for run in runs:
        report(run)
    print("== g. recovery after stop_blocked_tasks")
    recover(runs)


def start(run: Run) -> None:
    """Wait for the boot's load to decay, take the starting samples, start the tasks."""
    load = run.vm.guest_load()["load.1m"]
    while load >= SETTLE_LOAD:
        time.sleep(SAMPLE_INTERVAL)
        load = run.vm.guest_load()["load.1m"]
    run.load_before = load
    run.vcpu, run.stats = run.vm.vcpu_sample(), run.vm.cpu_stats()
    run.began = run.vcpu.at
    run.vm.start_blocked_tasks(run.tasks)
    run.next_print = run.began + PRINT_EVERY


def sample(run: Run) -> None:
    """Read load.1m; print the period's figures at each threshold, and the load now and then."""
    load = run.vm.guest_load()["load.1m"]
    now = time.monotonic()
    for threshold in (LOAD_THRESHOLD, SECOND_THRESHOLD):
        if load > threshold and threshold not in run.crossed:
            run.crossed[threshold] = now - run.began
            print(f"{run.vm.name}: passed {threshold:g}: {describe_period(run, load)}")
    if now >= run.next_print:
        print(f"{run.vm.name}: t={now - run.began:5.1f} s load.1m {load:.2f}")
        run.next_print += PRINT_EVERY


def report(run: Run) -> None:
    """The whole period's figures, then the tasks' states, wait channels and one stack."""
    load = run.vm.guest_load()["load.1m"]
    print(f"{run.vm.name}: whole period: {describe_period(run, load)}")
    crossed = ", ".join(
        f"> {threshold:g} after {run.crossed[threshold]:.1f} s"
        if threshold in run.crossed
        else f"never > {threshold:g}"
        for threshold in (LOAD_THRESHOLD, SECOND_THRESHOLD)
    )
    print(f"{run.vm.name}: {run.tasks} blocked tasks: load.1m {crossed}")
    tasks = run.vm.blocked_task_states()
    states = Counter(task.state for task in tasks)
    wchans = Counter(task.wchan for task in tasks)
    print(f"{run.vm.name}: {len(tasks)} tasks, states {dict(states)}, wchan {dict(wchans)}")
    if tasks:
        _, stack = run.vm.run_in_guest(["/bin/busybox", "cat", f"/proc/{tasks[0].pid}/stack"])
        print(f"{run.vm.name}: /proc/{tasks[0].pid}/stack:")
        print("\n".join(f"  {line}" for line in stack.splitlines()))
    _, procs = run.vm.run_in_guest(
        ["/bin/busybox", "sh", "-c", "cat /proc/loadavg; grep procs_blocked /proc/stat"]
    )
    print(f"{run.vm.name}: /proc/loadavg, /proc/stat: {' | '.join(procs.splitlines())}")


def recover(runs: Sequence[Run]) -> None:
    """Stop the tasks; check that they and the mount are gone and that the load decays."""
    for run in runs:
        run.vm.stop_blocked_tasks()
    stopped = time.monotonic()
    time.sleep(5.0)
    for run in runs:
        left = run.vm.blocked_task_states()
        _, mounts = run.vm.run_in_guest(["/bin/busybox", "grep", "-c", " fuse ", "/proc/mounts"])
        print(
            f"{run.vm.name}: 5 s after stop: {len(left)} blocked task(s) left,"
            f" {mounts.strip()} fuse mount(s), load.1m {run.vm.guest_load()['load.1m']:.2f}"
        )
    time.sleep(max(0.0, stopped + 60.0 - time.monotonic()))
    for run in runs:
        print(
            f"{run.vm.name}: 60 s after stop: load.1m {run.vm.guest_load()['load.1m']:.2f}"
            f" (agent answers: {run.vm.agent_answers()})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guestload_lab.blocked", description=__doc__)
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"how long each guest keeps its blocked tasks (default {DEFAULT_SECONDS:g})",
    )
    args = parser.parse_args(argv)
    parts = ensure_dependencies()
    slim = build_image(parts, with_stress=False)
    workdir = Path(tempfile.mkdtemp(prefix="gl-blocked-", dir="/tmp"))
    log_dir = workdir / "serial"
    specs = [(VmSpec(name=f"blocked-{tasks}", memory_mib=128), slim) for tasks in TASK_COUNTS]
    with (
        PrivateLibvirtd(workdir=workdir / "libvirt") as daemon,
        Hypervisor(daemon.uri) as hv,
        booted(hv, specs, log_dir) as vms,
    ):
        wait_all_agents(vms, timeout=180.0)
        runs = [Run(vm=vm, tasks=tasks) for vm, tasks in zip(vms, TASK_COUNTS, strict=True)]
        measure_blocked(runs, args.seconds)
    print(f"logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
