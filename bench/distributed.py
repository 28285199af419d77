"""The distributed path: simulated sites through sharded vmagents into one VictoriaMetrics.

Starts ``--instances`` exporters (``--source simulated``, each its own seed and ``--node``)
with ``--vms`` VMs between them, ``--shards`` vmagents that share the exporters with a
``hashmod`` relabel rule and remote-write to one VictoriaMetrics (Debian's 1.79), and vmalert
evaluating the project's rules there every ``--interval``, notifying an Alertmanager. After
every VM reached the store it measures over ``--minutes``: samples ingested per second,
series in the store, each rule's evaluation time (vmalert's ``/api/v1/rules``), missed rule
iterations, and the CPU and RSS of the store, the vmagents and vmalert.

    python -m bench.distributed --vms 10000 --instances 10 --shards 2 --interval 30s --minutes 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    RESULTS_DIR,
    SimulatedExporter,
    cpu_seconds,
    exit_on_sigterm,
    format_table,
    memory_bytes,
    write_results,
)
from guestload.settings import parse_duration
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import PROJECT_RULE_FILE, WebhookReceiver, wait_until
from guestload_lab.victoria import VictoriaMetrics, start_distributed_path


def _sum(text: str, name: str, **labels: str) -> float:
    """The sum of every sample ``name`` whose labels include ``labels``."""
    return sum(
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _time_rules(store: VictoriaMetrics, repeats: int = 3) -> dict[str, float]:
    """Each rule's expression as one instant query against the store, median of ``repeats``
    (what one evaluation of that rule alone costs, answer included)."""
    document = yaml.safe_load(PROJECT_RULE_FILE.read_text())
    seconds: dict[str, float] = {}
    for group in document["groups"]:
        for rule in group["rules"]:
            runs = []
            for _ in range(repeats):
                started = time.perf_counter()
                store.query(rule["expr"])
                runs.append(time.perf_counter() - started)
            seconds[rule.get("record") or rule["alert"]] = statistics.median(runs)
    return seconds


def measure(
    *,
    vms: int,
    instances: int,
    shards: int,
    interval: str,
    minutes: float,
    workdir: Path,
    latency_offset: str = "30s",
) -> dict[str, Any]:
    interval_seconds = parse_duration(interval)
    per_instance = [vms // instances + (1 if i < vms % instances else 0) for i in range(instances)]
    with ProcessRegistry() as registry, WebhookReceiver() as webhook:
        exporters = [
            SimulatedExporter(
                registry=registry,
                workdir=workdir / f"node-{i:02d}",
                vms=count,
                interval=interval,
                node=f"node-{i:02d}",
                seed=i + 1,
            )
            for i, count in enumerate(per_instance)
        ]
        for exporter in exporters:
            exporter.workdir.mkdir(parents=True, exist_ok=True)
            exporter.start()
        targets = [e.address for e in exporters]
        path = start_distributed_path(
            workdir=workdir,
            registry=registry,
            targets=targets,
            shards=shards,
            interval=interval,
            webhook_url=webhook.url,
            latency_offset=latency_offset,
        )
        store, agents, vmalert = path.store, path.agents, path.vmalert

        def scalar(expression: str) -> float:
            result = store.query(expression)
            return float(result[0]["value"][1]) if result else 0.0

        # VictoriaMetrics shows samples only ``latency_offset`` after they arrive.
        wait_until(
            lambda: scalar("count(kubevirt_vmi_guest_load_1m)") == vms,
            timeout=interval_seconds * 3 + 120,
            interval=2.0,
            what="every VM in the central store",
        )
        time.sleep(interval_seconds)  # one rule evaluation over the full data
        processes = {"store": store.pid, "vmalert": vmalert.pid}
        processes.update({f"vmagent-{i}": agent.pid for i, agent in enumerate(agents)})
        cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        store_before = store.metrics_text()
        vmalert_before = vmalert.metrics_text()
        started = time.monotonic()
        deadline = started + minutes * 60
        rule_seconds: dict[str, list[float]] = {}
        group_of: dict[str, str] = {}
        while time.monotonic() < deadline:
            time.sleep(min(interval_seconds, max(0.0, deadline - time.monotonic())))
            for group in vmalert.groups():
                for rule in group["rules"]:
                    group_of[rule["name"]] = group["name"]
                    rule_seconds.setdefault(rule["name"], []).append(float(rule["evaluationTime"]))
        wall = time.monotonic() - started
        store_after = store.metrics_text()
        vmalert_after = vmalert.metrics_text()
        cpu = {
            name: (cpu_seconds(pid) - cpu_before[name]) / wall for name, pid in processes.items()
        }
        rss = {name: memory_bytes(pid)["rss"] for name, pid in processes.items()}
        series = store.series_count()
        load_series = scalar("count(kubevirt_vmi_guest_load_1m)")
        up = scalar('count(up{job="guestload"} == 1)')
        firing = len(vmalert.alerts())
        queried = _time_rules(store)
    rows = _sum(store_after, "vm_rows_inserted_total") - _sum(
        store_before, "vm_rows_inserted_total"
    )
    iterations = {
        key: _sum(vmalert_after, f"vmalert_iteration_{key}")
        - _sum(vmalert_before, f"vmalert_iteration_{key}")
        for key in ("total", "missed_total")
    }
    rules = {
        name: {"group": group_of[name], "p50": statistics.median(v), "max": max(v)}
        for name, v in rule_seconds.items()
    }
    return {
        "vms": vms,
        "instances": instances,
        "shards": shards,
        "interval": interval,
        "window_seconds": wall,
        "samples_ingested_per_second": rows / wall,
        "series": series,
        "load_gauge_series": load_series,
        "targets_up": up,
        "rule_seconds": rules,
        "rule_query_seconds": queried,
        "group_seconds_p50": {
            group: sum(r["p50"] for r in rules.values() if r["group"] == group)
            for group in sorted(set(group_of.values()))
        },
        "rule_iterations": iterations["total"],
        "rule_iterations_missed": iterations["missed_total"],
        "cpu_share": cpu,
        "rss_bytes": rss,
        "alerts_active_at_end": firing,
    }


def table(result: dict[str, Any]) -> str:
    rows: list[list[object]] = [
        [
            "VMs / exporters / shards / interval",
            f"{result['vms']} / {result['instances']} / {result['shards']} / {result['interval']}",
        ],
        ["targets up", result["targets_up"]],
        ["samples ingested per second (scrapes + rules)", result["samples_ingested_per_second"]],
        ["series in the store", result["series"]],
        [
            "rule iterations (missed)",
            f"{result['rule_iterations']:.0f} ({result['rule_iterations_missed']:.0f})",
        ],
    ]
    for name, share in sorted(result["cpu_share"].items()):
        rows.append([f"{name} CPU, % of a core", share * 100])
    for name, rss in sorted(result["rss_bytes"].items()):
        rows.append([f"{name} RSS MiB", rss / 2**20])
    for group, seconds in sorted(result["group_seconds_p50"].items()):
        rows.append([f"group {group}: sum of rule evaluationTime p50 ms", seconds * 1000])
    ordered = sorted(result["rule_query_seconds"].items(), key=lambda item: -item[1])
    for name, seconds in ordered:
        reported = result["rule_seconds"].get(name, {}).get("p50", float("nan"))
        rows.append(
            [
                f"rule {name}: query alone / vmalert evaluationTime p50 ms",
                f"{seconds * 1000:.1f} / {reported * 1000:.1f}",
            ]
        )
    return format_table(["measure", "value"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__)
    parser.add_argument("--vms", type=int, default=10000, help="VMs in total")
    parser.add_argument("--instances", type=int, default=10, help="guestload exporters")
    parser.add_argument("--shards", type=int, default=2, help="vmagents sharing the exporters")
    parser.add_argument("--interval", default="30s", help="poll, scrape and rule interval")
    parser.add_argument("--minutes", type=float, default=5.0, help="measured window")
    parser.add_argument(
        "--latency-offset",
        default="30s",
        help="the store's -search.latencyOffset (its default: 30s)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "distributed.json")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="guestload-bench-distributed-") as workdir:
        result = measure(
            vms=args.vms,
            instances=args.instances,
            shards=args.shards,
            interval=args.interval,
            minutes=args.minutes,
            workdir=Path(workdir),
            latency_offset=args.latency_offset,
        )
    print(table(result))
    write_results(args.out, {"benchmark": "distributed", "result": result})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
