"""Measure bursty guests on real VMs: ``python -m guestload_lab.bursts``.

Boots one 1-vCPU guest per worker count (the image with stress-ng, qemu-ga 10.0) under a private
libvirt daemon, waits until the boot's own load has decayed, then starts
``LabVm.start_bursts(workers, period=…, burst_seconds=…)`` in each and reads
``guestInfo(LOAD)`` every 2 s for the given number of bursts. Prints, as plain text, each burst's
peak load.1m and load.5m (and when after the burst's start it came), and how long load.1m took
to fall back below 1 after the burst ended. Figures depend on whatever else runs on the host:
measure on a quiet one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from guestload_lab.causes import booted
from guestload_lab.deps import ensure_dependencies
from guestload_lab.image import build_image
from guestload_lab.libvirtd import PrivateLibvirtd
from guestload_lab.vm import (
    BURST_PERIOD,
    BURST_SECONDS,
    Hypervisor,
    LabVm,
    VmSpec,
    wait_all_agents,
)

SAMPLE_INTERVAL = 2.0
SETTLE_LOAD = 1.0
"""Bursts start once the boot's own load.1m has decayed below this."""
DEFAULT_WORKERS = (16, 32)


@dataclass
class Burst:
    """The peaks of one burst, measured from its start to the next burst's start."""

    peak_1m: float = 0.0
    peak_1m_at: float = 0.0
    peak_5m: float = 0.0
    below_one_after_end: float | None = None
    """Seconds from the burst's end until load.1m fell below 1 (None: not before the next)."""


@dataclass
class Run:
    vm: LabVm
    workers: int
    began: float = 0.0
    bursts: list[Burst] = field(default_factory=list)


def settle(vm: LabVm) -> None:
    while vm.guest_load()["load.1m"] >= SETTLE_LOAD:
        time.sleep(SAMPLE_INTERVAL)


def record(run: Run, period: float, burst_seconds: float) -> None:
    """Read the load once and fold it into the burst it belongs to."""
    load = run.vm.guest_load()
    elapsed = time.monotonic() - run.began
    index = int(elapsed // period)
    while len(run.bursts) <= index:
        run.bursts.append(Burst())
    burst = run.bursts[index]
    into = elapsed - index * period
    if load["load.1m"] > burst.peak_1m:
        burst.peak_1m, burst.peak_1m_at = load["load.1m"], into
    burst.peak_5m = max(burst.peak_5m, load["load.5m"])
    if into > burst_seconds and load["load.1m"] < 1.0 and burst.below_one_after_end is None:
        burst.below_one_after_end = into - burst_seconds


def measure(runs: Sequence[Run], *, period: int, burst_seconds: int, bursts: int) -> None:
    for run in runs:
        settle(run.vm)
    for run in runs:
        run.vm.start_bursts(run.workers, period=period, burst_seconds=burst_seconds)
        run.began = time.monotonic()
    end = max(run.began for run in runs) + (bursts - 1) * period + burst_seconds + 60.0
    while time.monotonic() < end:
        time.sleep(SAMPLE_INTERVAL)
        for run in runs:
            record(run, period, burst_seconds)
    for run in runs:
        run.vm.stop_bursts()
        for number, burst in enumerate(run.bursts[:bursts], start=1):
            below = (
                f"{burst.below_one_after_end:.0f} s"
                if burst.below_one_after_end is not None
                else "not seen"
            )
            print(
                f"{run.vm.name}: burst {number} ({run.workers} workers, {burst_seconds} s every"
                f" {period} s): peak load.1m {burst.peak_1m:.2f} at {burst.peak_1m_at:.0f} s,"
                f" peak load.5m {burst.peak_5m:.2f}; load.1m < 1 again {below} after its end"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guestload_lab.bursts", description=__doc__)
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=list(DEFAULT_WORKERS),
        help="stress-ng --cpu workers per burst; one guest per count (default: 16 32)",
    )
    parser.add_argument("--period", type=int, default=BURST_PERIOD, help="seconds between bursts")
    parser.add_argument("--burst-seconds", type=int, default=BURST_SECONDS)
    parser.add_argument("--bursts", type=int, default=2, help="bursts to measure (default 2)")
    args = parser.parse_args(argv)
    parts = ensure_dependencies()
    full = build_image(parts)
    workdir = Path(tempfile.mkdtemp(prefix="gl-bursts-", dir="/tmp"))
    specs = [(VmSpec(name=f"bursty-{workers}"), full) for workers in args.workers]
    with (
        PrivateLibvirtd(workdir=workdir / "libvirt") as daemon,
        Hypervisor(daemon.uri) as hv,
        booted(hv, specs, workdir / "serial") as vms,
    ):
        wait_all_agents(vms, timeout=180.0)
        runs = [Run(vm=vm, workers=workers) for vm, workers in zip(vms, args.workers, strict=True)]
        measure(runs, period=args.period, burst_seconds=args.burst_seconds, bursts=args.bursts)
    print(f"logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
