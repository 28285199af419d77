"""Rendering cost per sample: prometheus_client vs guestload's own exposition writer.

For each N, two polls of N simulated VMs (the simulated source's inventory and guest loads, one
interval apart, as the poller would publish them) become snapshots, and the second is rendered
in this process, in turn:

- by prometheus_client (``generate_latest`` over :class:`bench.reference.SnapshotCollector`:
  what the metrics cache did before it had its own writer);
- by :class:`guestload.exposition.writer.SnapshotWriter` after it rendered the first poll, as in a
  running exporter (each VM's label text is kept from the previous poll);
- by a fresh writer (nothing kept: the first poll after start-up).

Both outputs are checked equal byte for byte. Each figure is the median over ``--runs`` runs of
the CPU time of one render (renders of small snapshots are repeated to last ~20 ms). Also
timed: :func:`guestload.sources.libvirt.parse_vcpu_stats` on a bulk stats record as libvirt
returns it for a running domain with 1 and 8 vCPUs.

    python -m bench.render --vms 100,1000,10000 --runs 5
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import exposition
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import CollectorRegistry

from bench.common import RESULTS_DIR, format_table, write_results
from bench.reference import SnapshotCollector
from guestload.exposition.schema import MetricSet
from guestload.exposition.writer import SnapshotWriter
from guestload.identity import IdentityResolver
from guestload.model import AgentState, DomainSample, Snapshot
from guestload.settings import Settings
from guestload.simulation import Simulation
from guestload.sources.libvirt import parse_vcpu_stats
from guestload.sources.simulated import SimulatedSource

QUERIES = Settings(node="bench-node").queries()
"""The default queries: the load and guest CPU time."""
METRIC_SET = MetricSet(queries=QUERIES)

TARGET_SECONDS_PER_RUN = 0.02
"""Small renders are repeated until one run takes about this long."""
INTERVAL_SECONDS = 30.0
FORMATS = {"text": False, "openmetrics": True}


class _Clock:
    """The simulation's clock, moved on by hand between the two polls."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def poll_snapshots(vms: int) -> tuple[Snapshot, Snapshot]:
    """Two consecutive polls of ``vms`` simulated VMs, one interval apart."""
    clock = _Clock()
    source = SimulatedSource(simulation=Simulation(vms=vms), clock=clock, churn_thread=False)
    source.connect()
    resolver = IdentityResolver(node="bench-node", default_namespace="libvirt")
    build_info = {"python_version": platform.python_version()}
    facts = source.facts()
    snapshots = []
    for poll in (1, 2):
        domains = []
        calls: dict[tuple[str, AgentState], int] = {}
        for inventory in source.list_running_domains():
            readings = source.query_guest(inventory.uuid, QUERIES, 5.0)
            for name, reading in readings.items():
                calls[(name, reading.state)] = calls.get((name, reading.state), 0) + 1
            domains.append(
                DomainSample(
                    uuid=inventory.uuid,
                    domain_name=inventory.domain_name,
                    identity=resolver.resolve(inventory),
                    readings=readings,
                    vcpu_count=inventory.vcpu_count,
                    vcpus=inventory.vcpus,
                )
            )
        snapshots.append(
            Snapshot(
                source_up=True,
                domains=tuple(domains),
                polls_total=poll,
                last_poll_duration_seconds=0.25,
                last_success_timestamp_seconds=time.time(),
                agent_calls_total=calls,
                build_info=build_info,
                source=facts,
            )
        )
        clock.now += INTERVAL_SECONDS
    return snapshots[0], snapshots[1]


def prometheus_client_body(snapshot: Snapshot, *, openmetrics_format: bool) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, metric_set=METRIC_SET))
    if openmetrics_format:
        body: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
        return body
    return exposition.generate_latest(registry)


def writer_body(writer: SnapshotWriter, snapshot: Snapshot, *, openmetrics_format: bool) -> bytes:
    body = writer.render(snapshot).body(openmetrics_format=openmetrics_format)
    return body + b"# EOF\n" if openmetrics_format else body


def cpu_seconds_per_call(call: Callable[[], object], *, repeat: int) -> float:
    """CPU time of one ``call``, averaged over ``repeat`` calls in a row."""
    gc.collect()
    started = time.process_time()
    for _ in range(repeat):
        call()
    return (time.process_time() - started) / repeat


def measure_rendering(vms: int, runs: int) -> list[dict[str, Any]]:
    """Per format: CPU per render of the second poll, each way, medians of ``runs``."""
    previous, snapshot = poll_snapshots(vms)
    results = []
    for format_name, openmetrics_format in FORMATS.items():
        result = measure_format(
            previous, snapshot, openmetrics_format=openmetrics_format, runs=runs
        )
        results.append({"vms": vms, "format": format_name, **result})
        print(f"measured {vms} VMs, {format_name}", flush=True)
    return results


def measure_format(
    previous: Snapshot, snapshot: Snapshot, *, openmetrics_format: bool, runs: int
) -> dict[str, Any]:
    """Render ``snapshot`` each way in one format, after ``previous`` for the kept writer."""
    om = openmetrics_format
    reference = prometheus_client_body(snapshot, openmetrics_format=om)
    kept = SnapshotWriter(metric_set=METRIC_SET)
    writer_body(kept, previous, openmetrics_format=om)
    if writer_body(kept, snapshot, openmetrics_format=om) != reference:
        raise RuntimeError("the writer's exposition differs from prometheus_client's")
    samples = sum(1 for line in reference.splitlines() if not line.startswith(b"#"))
    ways: dict[str, Callable[[], bytes]] = {
        "prometheus_client": lambda: prometheus_client_body(snapshot, openmetrics_format=om),
        "writer": lambda: writer_body(kept, snapshot, openmetrics_format=om),
        "writer_first": lambda: writer_body(
            SnapshotWriter(metric_set=METRIC_SET), snapshot, openmetrics_format=om
        ),
    }
    once = cpu_seconds_per_call(ways["prometheus_client"], repeat=1)
    repeat = max(1, round(TARGET_SECONDS_PER_RUN / max(once, 1e-6)))
    # The writer is ~10x faster: repeat it more for a comparable measuring time.
    repeats = {"prometheus_client": repeat, "writer": repeat * 4, "writer_first": repeat * 4}
    timings: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(runs):
        for way, call in ways.items():
            timings[way].append(cpu_seconds_per_call(call, repeat=repeats[way]))
    medians = {way: statistics.median(values) for way, values in timings.items()}
    return {
        "samples": samples,
        "body_bytes": len(reference),
        "identical": True,
        "runs": runs,
        "cpu_seconds": timings,
        "cpu_seconds_median": medians,
        "microseconds_per_sample": {way: s / samples * 1e6 for way, s in medians.items()},
        "speedup": medians["prometheus_client"] / medians["writer"],
    }


def bulk_stats_record(vcpus: int) -> dict[str, object]:
    """A running domain's record from ``getAllDomainStats(STATE | VCPU)`` as libvirt 11 fills it."""
    record: dict[str, object] = {
        "state.state": 1,
        "state.reason": 1,
        "vcpu.current": vcpus,
        "vcpu.maximum": vcpus,
    }
    for vcpu in range(vcpus):
        record[f"vcpu.{vcpu}.state"] = 1
        record[f"vcpu.{vcpu}.time"] = 1_234_567_890_123 + vcpu
        record[f"vcpu.{vcpu}.wait"] = 0
        record[f"vcpu.{vcpu}.delay"] = 25_000_000 + vcpu
        record[f"vcpu.{vcpu}.halted"] = False
    return record


def measure_parse(vcpus: int, runs: int) -> dict[str, Any]:
    record = bulk_stats_record(vcpus)
    _, parsed = parse_vcpu_stats(record)
    if len(parsed) != vcpus:
        raise RuntimeError(f"parse_vcpu_stats found {len(parsed)} of {vcpus} vCPUs")
    timings = [
        cpu_seconds_per_call(lambda: parse_vcpu_stats(record), repeat=2000) for _ in range(runs)
    ]
    return {
        "vcpus": vcpus,
        "keys": len(record),
        "cpu_seconds": timings,
        "microseconds_median": statistics.median(timings) * 1e6,
    }


def rendering_table(results: list[dict[str, Any]]) -> str:
    headers = [
        "VMs",
        "samples",
        "format",
        "prometheus_client ms",
        "µs/sample",
        "writer ms",
        "µs/sample",
        "writer, first render ms",
        "speed-up",
    ]
    rows = [
        [
            r["vms"],
            r["samples"],
            r["format"],
            r["cpu_seconds_median"]["prometheus_client"] * 1e3,
            r["microseconds_per_sample"]["prometheus_client"],
            r["cpu_seconds_median"]["writer"] * 1e3,
            r["microseconds_per_sample"]["writer"],
            r["cpu_seconds_median"]["writer_first"] * 1e3,
            f"{r['speedup']:.1f}x",
        ]
        for r in results
    ]
    return format_table(headers, rows)


def parse_table(results: list[dict[str, Any]]) -> str:
    rows = [[r["vcpus"], r["keys"], r["microseconds_median"]] for r in results]
    return format_table(["vCPUs", "keys in the record", "parse_vcpu_stats µs"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__)
    parser.add_argument("--vms", default="100,1000,10000", help="comma-separated VM counts")
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "render.json")
    args = parser.parse_args(argv)
    rendering = []
    for vms in (int(v) for v in args.vms.split(",")):
        rendering += measure_rendering(vms, args.runs)
    parsing = [measure_parse(vcpus, args.runs) for vcpus in (1, 8)]
    print(rendering_table(rendering))
    print()
    print(parse_table(parsing))
    write_results(args.out, {"benchmark": "render", "rendering": rendering, "parsing": parsing})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
