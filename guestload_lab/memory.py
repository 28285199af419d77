"""Measure a guest in a swap storm on real guests: ``python -m guestload_lab.memory``.

Boots two 1-vCPU guests alike (the image with stress-ng, swap on a virtio disk, a virtio
balloon reporting statistics) under a private libvirt daemon. In one, ``start_memory_hog``
starts ``stress-ng --vm`` workers that together write more memory than the guest has, over and
over: the guest thrashes on swap. The other stays idle, for what "normal" balloon figures look
like. Prints as plain text, every ``--print-every`` seconds: load.1m, the vCPU busy share from
host vCPU time, the ``guest-get-cpustats`` shares (user/system/idle/iowait/steal) and the
balloon statistics (swap in/out, major and minor faults per second; available, usable and
unused memory) over the last interval; then each guest's whole period, when load.1m passed 11,
the guest's own ``/proc/vmstat`` counters, its OOM kills, and how the storm guest recovers after
``stop_memory_hog``. Shares depend on whatever else runs on the host: measure on a quiet one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from guestload_lab.causes import COUNTERS, LOAD_THRESHOLD, booted
from guestload_lab.deps import ensure_dependencies
from guestload_lab.image import build_image
from guestload_lab.libvirtd import PrivateLibvirtd
from guestload_lab.vm import BalloonSample, Hypervisor, LabVm, VcpuSample, VmSpec, wait_all_agents

MEMORY_MIB = 192
"""Guest RAM: the image with stress-ng needs 160 MiB to unpack; 192 MiB leaves ~95 MiB free."""
SWAP_MIB = 256
WORKERS = 16
TOTAL_MIB = 192
"""16 workers x 12 MiB = 192 MiB written over and over: more than the guest's 154 MiB of RAM
(~95 MiB of it free after boot)."""
BALLOON_PERIOD = 2
STORM_SECONDS = 180.0
IDLE_SECONDS = 60.0
PRINT_EVERY = 10.0
SETTLE_LOAD = 1.0
"""Measuring starts once each guest's boot load.1m has decayed below this."""
SETTLE_TIMEOUT = 240.0
MEMORY_FIGURES = ("available", "usable", "unused")
"""Balloon gauges, in KiB: guest RAM (MemTotal), MemAvailable and MemFree."""
VMSTAT_FIELDS = ("pswpin", "pswpout", "pgmajfault", "pgfault", "oom_kill")


@dataclass(frozen=True, slots=True)
class Sample:
    """What one guest shows at one moment; ``None`` where its agent did not answer."""

    load: float | None
    vcpu: VcpuSample
    cpustats: list[dict[str, Any]] | None
    balloon: BalloonSample


@dataclass
class Run:
    """One guest's measurement: its samples at the start, at the last print and now."""

    vm: LabVm
    seconds: float
    first: Sample | None = None
    last: Sample | None = None
    began: float = 0.0
    crossed: float | None = None
    """Seconds after the start when load.1m first passed ``LOAD_THRESHOLD``."""
    rows: list[str] = field(default_factory=list)


def take_sample(vm: LabVm) -> Sample:
    """load.1m, vCPU counters, cpustats and balloon stats (agent calls may fail under thrash)."""
    load: float | None = None
    cpustats: list[dict[str, Any]] | None = None
    try:
        load = vm.guest_load()["load.1m"]
        cpustats = vm.cpu_stats()
    except libvirt.libvirtError:
        pass
    return Sample(load=load, vcpu=vm.vcpu_sample(), cpustats=cpustats, balloon=vm.balloon_sample())


def cpu_shares(before: list[dict[str, Any]] | None, after: list[dict[str, Any]] | None) -> str:
    """Shares of the guest's CPU time gained between two cpustats (all counters summed)."""
    if before is None or after is None:
        return "cpustats: no answer"
    gained: dict[str, int] = {}
    for early, late in zip(before, after, strict=True):
        for name, value in late.items():
            if name != "cpu" and isinstance(value, int):
                gained[name] = gained.get(name, 0) + value - int(early.get(name, 0))
    total = sum(gained.values()) or 1
    return " ".join(f"{name} {100 * gained.get(name, 0) / total:.0f}%" for name in COUNTERS)


def balloon_figures(before: BalloonSample, after: BalloonSample) -> str:
    """Per-second swap traffic and faults between two balloon reports, and the memory gauges."""
    rates = before.rates(after)
    if rates is None:
        traffic = "balloon: no new report"
    else:
        traffic = (
            f"swap in {rates['swap_in'] / 1024:.2f} MiB/s out {rates['swap_out'] / 1024:.2f}"
            f" MiB/s, major faults {rates['major_fault']:.1f}/s"
            f" minor {rates['minor_fault']:.0f}/s"
        )
    gauges = " ".join(
        f"{name} {after.stats[name] / 1024:.0f}" for name in MEMORY_FIGURES if name in after.stats
    )
    return f"{traffic}; MiB {gauges}"


def describe(before: Sample, after: Sample) -> str:
    busy = before.vcpu.busy_share(after.vcpu)
    return (
        f"busy {busy:.3f}; {cpu_shares(before.cpustats, after.cpustats)};"
        f" {balloon_figures(before.balloon, after.balloon)}"
    )


def load_text(load: float | None) -> str:
    return "  ?  " if load is None else f"{load:5.2f}"


def settle(vm: LabVm) -> float:
    """Wait until the guest's load.1m is below ``SETTLE_LOAD`` (or give up); that load."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    load = vm.guest_load()["load.1m"]
    while load >= SETTLE_LOAD and time.monotonic() < deadline:
        time.sleep(2.0)
        load = vm.guest_load()["load.1m"]
    return load


def begin(run: Run) -> None:
    run.first = run.last = take_sample(run.vm)
    run.began = run.first.vcpu.at


def step(run: Run) -> None:
    """Sample and print the interval since the last print; note when load.1m passes 11."""
    assert run.last is not None
    now = take_sample(run.vm)
    elapsed = now.vcpu.at - run.began
    if run.crossed is None and now.load is not None and now.load > LOAD_THRESHOLD:
        run.crossed = elapsed
    print(
        f"{run.vm.name}: t={elapsed:5.1f} s load.1m {load_text(now.load)};"
        f" {describe(run.last, now)}",
        flush=True,
    )
    run.last = now


def report(run: Run) -> None:
    """The whole period, the crossing of 11, the guest's own counters and its OOM kills."""
    assert run.first is not None
    assert run.last is not None
    first, last = run.first, run.last
    print(
        f"{run.vm.name}: whole {last.vcpu.at - run.began:.0f} s: load.1m"
        f" {load_text(first.load)} -> {load_text(last.load)}; {describe(first, last)}"
    )
    crossed = "never" if run.crossed is None else f"after {run.crossed:.0f} s"
    print(f"{run.vm.name}: load.1m > {LOAD_THRESHOLD:g} {crossed}")
    fields = "|".join(VMSTAT_FIELDS)
    script = (
        f"grep -E '^({fields}) ' /proc/vmstat | tr '\\n' ' '; echo;"
        " grep -E '^(MemTotal|MemFree|MemAvailable|SwapTotal|SwapFree):' /proc/meminfo"
        " | tr -s ' ' | tr '\\n' ' '; echo; cat /proc/loadavg"
    )
    try:
        _, output = run.vm.run_in_guest(["/bin/busybox", "sh", "-c", script], timeout=60.0)
        print("\n".join(f"{run.vm.name}: {line}" for line in output.splitlines() if line))
        kills = run.vm.oom_kills()
        print(f"{run.vm.name}: {len(kills)} OOM kill(s)")
        for line in kills[:5]:
            print(f"{run.vm.name}:   {line}")
    except (libvirt.libvirtError, RuntimeError) as error:
        print(f"{run.vm.name}: guest counters not read: {error}")


def recover(run: Run) -> None:
    """Stop the hog; how many of its processes are left, and how the load decays."""
    run.vm.stop_memory_hog()
    stopped = time.monotonic()
    _, left = run.vm.run_in_guest(["/bin/busybox", "sh", "-c", "ps | grep -c '[s]tress-ng'"])
    print(f"{run.vm.name}: after stop_memory_hog: {left.strip()} stress-ng process(es) left")
    before = take_sample(run.vm)
    time.sleep(max(0.0, stopped + 30.0 - time.monotonic()))
    after = take_sample(run.vm)
    print(
        f"{run.vm.name}: 30 s after stop: load.1m {load_text(after.load)};"
        f" {describe(before, after)}"
    )


def measure(storm: Run, idle: Run, workers: int, total_mib: int) -> None:
    for run in (storm, idle):
        print(f"{run.vm.name}: load.1m {settle(run.vm):.2f} before measuring", flush=True)
    print(
        f"== memory. {storm.vm.name}: stress-ng --vm {workers} --vm-bytes {total_mib}M"
        f" --vm-keep for {storm.seconds:g} s; {idle.vm.name}: idle for {idle.seconds:g} s"
    )
    begin(idle)
    begin(storm)
    storm.vm.start_memory_hog(workers, total_mib=total_mib, seconds=int(storm.seconds) + 120)
    runs = [storm, idle]
    next_print = time.monotonic() + PRINT_EVERY
    while runs:
        time.sleep(max(0.0, next_print - time.monotonic()))
        next_print += PRINT_EVERY
        for run in list(runs):
            step(run)
            if time.monotonic() - run.began >= run.seconds - 1.0:
                report(run)
                runs.remove(run)
                if run is idle:
                    run.vm.destroy()
                    print(f"{run.vm.name}: destroyed")
    recover(storm)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guestload_lab.memory", description=__doc__)
    parser.add_argument("--memory-mib", type=int, default=MEMORY_MIB, help="guest RAM")
    parser.add_argument("--swap-mib", type=int, default=SWAP_MIB, help="guest swap disk")
    parser.add_argument("--workers", type=int, default=WORKERS, help="stress-ng --vm workers")
    parser.add_argument(
        "--total-mib", type=int, default=TOTAL_MIB, help="MiB the workers write together"
    )
    parser.add_argument("--balloon-period", type=int, default=BALLOON_PERIOD, help="seconds")
    parser.add_argument("--seconds", type=float, default=STORM_SECONDS, help="storm length")
    parser.add_argument("--idle-seconds", type=float, default=IDLE_SECONDS, help="idle length")
    args = parser.parse_args(argv)
    parts = ensure_dependencies()
    full = build_image(parts)
    workdir = Path(tempfile.mkdtemp(prefix="gl-memory-", dir="/tmp"))
    log_dir = workdir / "serial"
    specs = [
        (
            VmSpec(
                name=name,
                memory_mib=args.memory_mib,
                swap_mib=args.swap_mib,
                balloon_stats_period=args.balloon_period,
            ),
            full,
        )
        for name in ("memory-storm", "memory-idle")
    ]
    with (
        PrivateLibvirtd(workdir=workdir / "libvirt") as daemon,
        Hypervisor(daemon.uri) as hv,
        booted(hv, specs, log_dir) as (storm_vm, idle_vm),
    ):
        wait_all_agents([storm_vm, idle_vm], timeout=180.0)
        measure(
            Run(vm=storm_vm, seconds=args.seconds),
            Run(vm=idle_vm, seconds=args.idle_seconds),
            args.workers,
            args.total_mib,
        )
    print(f"logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
