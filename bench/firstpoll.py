"""First-poll time against the number of VMs: ``guestload serve --source simulated`` from cold.

For each size in turn (``--rounds`` times, sizes interleaved so that other load on the machine
falls on all of them alike), a fresh exporter starts with ``--simulated.vms N --log.level
warn`` and its default interval (120 s, so the second poll never comes first); once its first
poll is published, the benchmark reads ``guestload_poll_duration_seconds`` (with
``guestload_polls_total`` 1), and the exporter's CPU seconds up to then (start-up, the first
poll and its rendering: less disturbed than wall time by other work on the machine). The
first poll creates the simulated VMs, lists them and asks every agent once. A poll that is
linear in the VMs takes twice as long at twice the VMs: target, the largest size's median at
most 2.3 times the median of the size half as large.

Each start also checks the start-up log: ``--log.level info`` is run once at the smallest
size, and it must hold one line summing up the agents' states, not a line per VM.

    python -m bench.firstpoll --vms 5000,10000,20000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    SimulatedExporter,
    cpu_seconds,
    exit_on_sigterm,
    format_table,
    metric_values,
    write_results,
)
from guestload_lab.processes import ProcessRegistry

TARGET_RATIO = 2.3
"""First poll at twice the VMs over the first poll at the VMs: 2 is linear."""
INTERVAL = "120s"
"""guestload's default interval."""
SUMMARY = "guest agent states after the first poll"
PER_VM = "guest agent state changed"


def first_poll(vms: int, *, log_level: str = "warn") -> dict[str, Any]:
    """Start one exporter with ``vms`` VMs; its first poll's duration and its start-up log."""
    with (
        ProcessRegistry() as registry,
        tempfile.TemporaryDirectory(prefix="guestload-bench-firstpoll-") as workdir,
    ):
        exporter = SimulatedExporter(
            registry=registry,
            workdir=Path(workdir),
            vms=vms,
            interval=INTERVAL,
            extra_args=["--log.level", log_level],
        )
        exporter.start(timeout=600.0)
        cpu = cpu_seconds(exporter.pid)
        text = exporter.scrape_text()
        exporter.stop()
        log = (Path(workdir) / "guestload.log").read_text(errors="replace")
    (polls,) = metric_values(text, "guestload_polls_total")
    (seconds,) = metric_values(text, "guestload_poll_duration_seconds")
    return {
        "vms": vms,
        "log_level": log_level,
        "polls_total": polls,
        "first_poll_seconds": seconds,
        "exporter_cpu_seconds_at_publish": cpu,
        "log_lines": len(log.splitlines()),
        "summary_lines": [line for line in log.splitlines() if SUMMARY in line],
        "per_vm_state_lines": sum(1 for line in log.splitlines() if PER_VM in line),
    }


def measure(sizes: list[int], rounds: int) -> dict[str, Any]:
    runs = [first_poll(vms) for _ in range(rounds) for vms in sizes]
    log_check = first_poll(min(sizes), log_level="info")
    by_size: dict[int, dict[str, Any]] = {}
    for vms in sizes:
        seconds = [r["first_poll_seconds"] for r in runs if r["vms"] == vms]
        cpu = [r["exporter_cpu_seconds_at_publish"] for r in runs if r["vms"] == vms]
        by_size[vms] = {
            "first_poll_seconds": seconds,
            "median": statistics.median(seconds),
            "min": min(seconds),
            "cpu_seconds_median": statistics.median(cpu),
        }
    pairs = [(small, large) for small in sizes for large in sizes if large == 2 * small]
    ratios = {
        f"{large}/{small}": by_size[large]["median"] / by_size[small]["median"]
        for small, large in pairs
    }
    cpu_ratios = {
        f"{large}/{small}": (
            by_size[large]["cpu_seconds_median"] / by_size[small]["cpu_seconds_median"]
        )
        for small, large in pairs
    }
    return {
        "sizes": by_size,
        "ratios_of_medians": ratios,
        "cpu_ratios_of_medians": cpu_ratios,
        "target_ratio": TARGET_RATIO,
        "runs": runs,
        "log_check": log_check,
    }


def failures(result: dict[str, Any]) -> list[str]:
    """What must hold whatever the machine: each run was a first poll; one summary line."""
    failed = [f"not a first poll: {r}" for r in result["runs"] if r["polls_total"] != 1]
    check = result["log_check"]
    if len(check["summary_lines"]) != 1 or check["per_vm_state_lines"]:
        failed.append(
            f"start-up log at info: {len(check['summary_lines'])} summary lines, "
            f"{check['per_vm_state_lines']} per-VM state lines"
        )
    return failed


def table(result: dict[str, Any]) -> str:
    rows: list[list[object]] = [
        [
            f"{vms:,}",
            " ".join(f"{s:.2f}" for s in size["first_poll_seconds"]),
            f"{size['median']:.2f}",
            f"{size['min']:.2f}",
            f"{size['cpu_seconds_median']:.2f}",
        ]
        for vms, size in result["sizes"].items()
    ]
    headers = ["VMs", "first poll s (each round)", "median s", "min s", "CPU s at publish"]
    text = format_table(headers, rows)
    for pair, ratio in result["ratios_of_medians"].items():
        cpu = result["cpu_ratios_of_medians"][pair]
        text += (
            f"\nratio of medians {pair}: {ratio:.2f} (target <= {TARGET_RATIO}); "
            f"of CPU at publish: {cpu:.2f}"
        )
    check = result["log_check"]
    summary = check["summary_lines"][0] if check["summary_lines"] else "none"
    text += (
        f"\nstart-up log at info, {check['vms']:,} VMs: {check['log_lines']} lines, "
        f"{check['per_vm_state_lines']} per-VM state lines; summary: {summary}"
    )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.firstpoll", description=__doc__)
    parser.add_argument("--vms", default="5000,10000,20000", help="comma-separated VM counts")
    parser.add_argument("--rounds", type=int, default=3, help="starts per size")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "firstpoll.json")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    result = measure([int(v) for v in args.vms.split(",")], args.rounds)
    print(table(result))
    failed = failures(result)
    write_results(args.out, {"benchmark": "firstpoll", "result": result, "failed": failed})
    print(f"wrote {args.out}")
    for failure in failed:
        print(f"FAILED: {failure}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
