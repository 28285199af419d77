"""Density: CPU share and memory of ``guestload serve`` with many simulated VMs.

One exporter per poll interval runs side by side (``--source simulated``), each scraped with
gzip every ``--scrape-interval`` as Prometheus would. After the first poll (start-up and
imports excluded) the benchmark reads each process's CPU time and RSS over ``--minutes``.
The simulation itself runs inside the exporter, so its cost is measured separately (same
VMs, same steps, in this process) and reported next to the total.

    python -m bench.density --vms 1000 --intervals 30s,120s --minutes 6
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    SimulatedExporter,
    cpu_seconds,
    exit_on_sigterm,
    format_table,
    memory_bytes,
    metric_values,
    scrape,
    write_results,
)
from guestload.settings import Settings, parse_duration
from guestload.simulation import Simulation
from guestload.sources.simulated import STEP_SECONDS, SimulatedSource
from guestload_lab.processes import ProcessRegistry

TARGET_CPU_SHARE = 0.05
TARGET_RSS_BYTES = 60 * 2**20


def simulation_cpu_per_poll(*, vms: int, interval: float, polls: int = 3) -> float:
    """CPU seconds the simulated source spends on one poll (listing and every read)."""
    clock = [0.0]
    source = SimulatedSource(simulation=Simulation(vms=vms), clock=lambda: clock[0])
    source.connect()
    source.list_running_domains()
    started = time.process_time()
    for _ in range(polls):
        clock[0] += interval
        for domain in source.list_running_domains():
            source.query_guest(domain.uuid, Settings(node="bench").queries(), 5.0)
    return (time.process_time() - started) / polls


def measure(
    *, vms: int, intervals: list[str], minutes: float, scrape_interval: float, workdir: Path
) -> list[dict[str, Any]]:
    with ProcessRegistry() as registry:
        exporters = {
            interval: SimulatedExporter(
                registry=registry, workdir=workdir / interval, vms=vms, interval=interval
            )
            for interval in intervals
        }
        for exporter in exporters.values():
            exporter.workdir.mkdir(parents=True, exist_ok=True)
            exporter.start()
        time.sleep(2.0)
        first = {i: (time.monotonic(), cpu_seconds(e.pid)) for i, e in exporters.items()}
        polls_before = {i: _polls(e) for i, e in exporters.items()}
        deadline = time.monotonic() + minutes * 60
        scrapes = 0
        while time.monotonic() < deadline:
            for exporter in exporters.values():
                scrape("127.0.0.1", exporter.port, "/metrics", gzip=True)
            scrapes += 1
            time.sleep(max(0.0, min(scrape_interval, deadline - time.monotonic())))
        results = []
        for interval, exporter in exporters.items():
            wall = time.monotonic() - first[interval][0]
            cpu = cpu_seconds(exporter.pid) - first[interval][1]
            polls = _polls(exporter) - polls_before[interval]
            memory = memory_bytes(exporter.pid)
            simulation = simulation_cpu_per_poll(vms=vms, interval=parse_duration(interval))
            results.append(
                {
                    "vms": vms,
                    "interval": interval,
                    "wall_seconds": wall,
                    "cpu_seconds": cpu,
                    "cpu_share": cpu / wall,
                    "polls": polls,
                    "scrapes": scrapes,
                    "simulation_cpu_seconds_per_poll": simulation,
                    "simulation_cpu_share": simulation * polls / wall,
                    "rss_bytes": memory["rss"],
                    "peak_rss_bytes": memory["hwm"],
                    "meets_cpu_target": cpu / wall <= TARGET_CPU_SHARE,
                    "meets_rss_target": memory["hwm"] <= TARGET_RSS_BYTES,
                }
            )
            exporter.stop()
    return results


def _polls(exporter: SimulatedExporter) -> int:
    return int(metric_values(exporter.scrape_text(), "guestload_polls_total")[0])


def table(results: list[dict[str, Any]]) -> str:
    headers = [
        "VMs",
        "interval",
        "window s",
        "polls",
        "CPU % of a core",
        "of which simulation %",
        "RSS MiB",
        "peak RSS MiB",
    ]
    rows = [
        [
            r["vms"],
            r["interval"],
            r["wall_seconds"],
            r["polls"],
            r["cpu_share"] * 100,
            r["simulation_cpu_share"] * 100,
            r["rss_bytes"] / 2**20,
            r["peak_rss_bytes"] / 2**20,
        ]
        for r in results
    ]
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.density", description=__doc__)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--intervals", default="30s,120s", help="comma-separated poll intervals")
    parser.add_argument("--minutes", type=float, default=6.0, help="measured window")
    parser.add_argument("--scrape-interval", default="30s", help="how often each is scraped")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "density.json")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="guestload-bench-density-") as workdir:
        results = measure(
            vms=args.vms,
            intervals=args.intervals.split(","),
            minutes=args.minutes,
            scrape_interval=parse_duration(args.scrape_interval),
            workdir=Path(workdir),
        )
    print(table(results))
    write_results(
        args.out, {"benchmark": "density", "step_seconds": STEP_SECONDS, "results": results}
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
