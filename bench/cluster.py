"""Cluster scale: a real Prometheus scraping guestload instances that total 10,000 VMs.

Starts ``--instances`` exporters (``--source simulated``, each its own seed and ``--node``, so
every VM is unique) with ``--vms`` VMs between them, and Debian's Prometheus (own temporary data
folder, loopback) scraping them every ``--interval`` with the project's rules (``--rules``,
by default ``monitoring/rules/guestload.rules.yml``) evaluated at the same interval, beside
the reference groups of :mod:`bench.rulecost` and, with ``--compare``, a second rule file
(renamed apart). After every target was scraped once and ``--warmup`` more minutes (give the
rates' window time to fill), it measures over ``--minutes``: samples ingested per minute
(scraped and recorded), series in the head block, each rule group's and rule's evaluation
time (medians over the window's evaluations) and each group's as a multiple of the reference
group's (one ``rate`` over the guest CPU counters), and Prometheus's CPU and RSS.

    python -m bench.cluster --vms 10000 --instances 10 --interval 30s --minutes 6
    git show main:monitoring/rules/guestload.rules.yml > /tmp/before.rules.yml
    python -m bench.cluster --compare /tmp/before.rules.yml --warmup 10 --minutes 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from monitoring.settings import load_settings
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    RESULTS_DIR,
    SimulatedExporter,
    cpu_seconds,
    exit_on_sigterm,
    format_table,
    write_results,
)
from bench.rulecost import (
    COMPARE_PREFIX,
    EvaluationLog,
    check_inputs,
    reference_rule_file,
    renamed_rule_file,
    summarise,
)
from guestload.settings import parse_duration
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import (
    PROJECT_RULE_FILE,
    REPO_ROOT,
    Prometheus,
    http_get,
    wait_until,
)

LOAD_METRICS = (
    "kubevirt_vmi_guest_load_1m",
    "kubevirt_vmi_guest_load_5m",
    "kubevirt_vmi_guest_load_15m",
)


def own_metrics(prometheus: Prometheus) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Prometheus's own /metrics: name -> {labels: value}."""
    text = http_get(f"{prometheus.url}/metrics", timeout=30).decode()
    metrics: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            metrics.setdefault(sample.name, {})[labels] = float(sample.value)
    return metrics


def _total(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> float:
    return sum(metrics.get(name, {}).values())


def _scalar(prometheus: Prometheus, expression: str) -> float:
    result = prometheus.query(expression)
    return float(result[0]["value"][1]) if result else 0.0


def _rule_files(rule_file: Path, compare: Path | None, window: str, workdir: Path) -> list[Path]:
    """The rule file measured, the reference groups and the compared file, renamed apart."""
    for path in (rule_file, compare):
        if path is not None and not path.exists():
            raise FileNotFoundError(f"{path} is missing: the cluster run needs the rules")
    check_inputs(rule_file)
    workdir.mkdir(parents=True, exist_ok=True)
    files = [rule_file, reference_rule_file(workdir / "reference.rules.yml", window=window)]
    if compare is not None:
        files.append(renamed_rule_file(compare, workdir / "compare.rules.yml"))
    return files


def measure(
    *,
    vms: int,
    instances: int,
    interval: str,
    minutes: float,
    workdir: Path,
    rule_file: Path = PROJECT_RULE_FILE,
    compare: Path | None = None,
    warmup_minutes: float = 0.0,
    window: str = "10m",
) -> dict[str, Any]:
    """One run (see the module); *window* is the reference rate's."""
    interval_seconds = parse_duration(interval)
    rule_files = _rule_files(rule_file, compare, window, workdir / "rules")
    per_instance = [vms // instances + (1 if i < vms % instances else 0) for i in range(instances)]
    with ProcessRegistry() as registry:
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
        prometheus = Prometheus(
            workdir=workdir / "prometheus",
            registry=registry,
            targets=[e.address for e in exporters],
            rule_files=rule_files,
            interval_seconds=interval_seconds,
        )
        prometheus.start()
        wait_until(
            lambda: (
                _scalar(prometheus, "count(up == 1)") == instances
                and _scalar(prometheus, "count(kubevirt_vmi_guest_load_1m)") == vms
            ),
            timeout=interval_seconds * 3 + 60,
            interval=2.0,
            what="every target scraped with every VM",
        )
        # Let one rule evaluation pass over the full data before the window opens.
        time.sleep(interval_seconds + warmup_minutes * 60)
        before = own_metrics(prometheus)
        exporter_cpu_before = sum(cpu_seconds(e.pid) for e in exporters)
        started = time.monotonic()
        evaluations = EvaluationLog()
        evaluations.observe(prometheus.rule_groups())
        deadline = started + minutes * 60
        # Several looks per interval: each evaluation is taken once, by its lastEvaluation.
        while time.monotonic() < deadline:
            time.sleep(min(interval_seconds / 3, max(0.0, deadline - time.monotonic())))
            evaluations.observe(prometheus.rule_groups())
        after = own_metrics(prometheus)
        wall = time.monotonic() - started
        exporter_cpu = sum(cpu_seconds(e.pid) for e in exporters) - exporter_cpu_before
        scraped_per_scrape = _scalar(prometheus, "sum(scrape_samples_scraped)")
        load_series = sum(_scalar(prometheus, f"count({m})") for m in LOAD_METRICS)
        scrape_duration_max = _scalar(prometheus, "max(scrape_duration_seconds)")
        scrape_duration_avg = _scalar(prometheus, "avg(scrape_duration_seconds)")
        rule_samples = _total(after, "prometheus_rule_group_last_evaluation_samples")
        firing = len(prometheus.alerts())
        prometheus.stop()
        for exporter in exporters:
            exporter.stop()
    appended = _total(after, "prometheus_tsdb_head_samples_appended_total") - _total(
        before, "prometheus_tsdb_head_samples_appended_total"
    )
    prometheus_cpu = _total(after, "process_cpu_seconds_total") - _total(
        before, "process_cpu_seconds_total"
    )
    iterations = {
        name: _total(after, f"prometheus_rule_group_iterations{name}_total")
        - _total(before, f"prometheus_rule_group_iterations{name}_total")
        for name in ("", "_missed")
    }
    per_minute = 60.0 / interval_seconds
    costs = summarise(evaluations)
    by_group: dict[str, dict[str, dict[str, float]]] = costs.pop("rule_seconds_by_group")
    measured_groups = [g["name"] for g in yaml.safe_load(rule_file.read_text())["groups"]]
    return {
        "rule_file": str(rule_file),
        "compare_file": None if compare is None else str(compare),
        "warmup_minutes": warmup_minutes,
        "reference_window": window,
        "vms": vms,
        "instances": instances,
        "interval": interval,
        "window_seconds": wall,
        "samples_appended_per_minute": appended / wall * 60,
        "scraped_samples_per_scrape_round": scraped_per_scrape,
        "scraped_samples_per_minute": scraped_per_scrape * per_minute,
        "load_gauge_series": load_series,
        "load_gauge_samples_per_minute": load_series * per_minute,
        "rule_samples_per_evaluation": rule_samples,
        "rule_group_iterations": iterations[""],
        "rule_group_iterations_missed": iterations["_missed"],
        "head_series": _total(after, "prometheus_tsdb_head_series"),
        **costs,
        "rule_seconds": {
            rule: seconds for group in measured_groups for rule, seconds in by_group[group].items()
        },
        "compare_rule_seconds": {
            rule.removeprefix(COMPARE_PREFIX): seconds
            for group, rules in by_group.items()
            if group.startswith(COMPARE_PREFIX)
            for rule, seconds in rules.items()
        },
        "prometheus_cpu_share": prometheus_cpu / wall,
        "prometheus_rss_bytes": _total(after, "process_resident_memory_bytes"),
        "exporters_cpu_share": exporter_cpu / wall,
        "scrape_duration_seconds": {"avg": scrape_duration_avg, "max": scrape_duration_max},
        "alerts_active_at_end": firing,
    }


def table(result: dict[str, Any]) -> str:
    rows: list[list[object]] = [
        [
            "VMs / exporters / interval",
            f"{result['vms']} / {result['instances']} / {result['interval']}",
        ],
        ["samples appended per minute (scrapes + rules)", result["samples_appended_per_minute"]],
        ["scraped samples per minute", result["scraped_samples_per_minute"]],
        ["load gauge samples per minute (3 per VM)", result["load_gauge_samples_per_minute"]],
        ["head series", result["head_series"]],
        ["Prometheus CPU, % of a core", result["prometheus_cpu_share"] * 100],
        ["Prometheus RSS MiB", result["prometheus_rss_bytes"] / 2**20],
        [
            "scrape duration avg / max s",
            "{avg:.3f} / {max:.3f}".format(**result["scrape_duration_seconds"]),
        ],
        ["exporters CPU, % of a core (all)", result["exporters_cpu_share"] * 100],
        ["samples recorded per rule evaluation", result["rule_samples_per_evaluation"]],
        [
            "rule group iterations (missed)",
            f"{result['rule_group_iterations']:.0f} ({result['rule_group_iterations_missed']:.0f})",
        ],
    ]
    return format_table(["measure", "value"], rows)


def cost_table(result: dict[str, Any]) -> str:
    """Each rule group's evaluation time and its multiple of the reference groups'."""
    to_reference = result.get("ratio_to_reference", {})
    to_inputs = result.get("ratio_to_inputs", {})
    rows: list[list[object]] = [
        [
            name,
            f"{seconds['n']:.0f}",
            seconds["p50"] * 1000,
            seconds["max"] * 1000,
            _ratio(to_reference.get(name)),
            _ratio(to_inputs.get(name)),
        ]
        for name, seconds in sorted(result["rule_group_seconds"].items())
    ]
    headers = ["rule group", "evaluations", "p50 ms", "max ms", "x reference", "x inputs"]
    return format_table(headers, rows)


def rule_table(rules: dict[str, dict[str, float]], title: str) -> str:
    """Each rule's evaluation time, costliest first."""
    ordered = sorted(rules.items(), key=lambda item: -item[1]["p50"])
    rows: list[list[object]] = [
        [name, seconds["p50"] * 1000, seconds["max"] * 1000] for name, seconds in ordered
    ]
    return format_table([title, "p50 ms", "max ms"], rows)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(result: dict[str, Any]) -> str:
    """Every table of a run."""
    parts = [table(result), cost_table(result), rule_table(result["rule_seconds"], "rule")]
    if result["compare_rule_seconds"]:
        parts.append(rule_table(result["compare_rule_seconds"], "rule (compared file)"))
    parts.extend(f"rule {rule} failed: {error}" for rule, error in result["rule_errors"].items())
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--vms", type=int, default=10000, help="VMs in total")
    parser.add_argument("--instances", type=int, default=10, help="guestload exporters")
    parser.add_argument("--interval", default="30s", help="poll, scrape and rule interval")
    parser.add_argument("--minutes", type=float, default=6.0, help="measured window")
    parser.add_argument(
        "--warmup", type=float, default=0.0, help="minutes between the first scrape and the window"
    )
    parser.add_argument("--rules", type=Path, default=PROJECT_RULE_FILE, help="rule file measured")
    parser.add_argument(
        "--compare", type=Path, help="a second rule file measured beside it (renamed apart)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "cluster.json")
    args = parser.parse_args(argv)
    window = load_settings(REPO_ROOT / "monitoring" / "config.yml").window("vcpu_rate")
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="guestload-bench-cluster-") as workdir:
        result = measure(
            vms=args.vms,
            instances=args.instances,
            interval=args.interval,
            minutes=args.minutes,
            workdir=Path(workdir),
            rule_file=args.rules,
            compare=args.compare,
            warmup_minutes=args.warmup,
            window=window,
        )
    print(report(result))
    write_results(args.out, {"benchmark": "cluster", "result": result})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
