"""Soak: one ``guestload serve`` with thousands of churning simulated VMs, scraped for minutes.

The exporter runs ``--source simulated`` with VMs replaced every minute (each new VM boots
with its agent not yet connected, then connected: the events libvirt would send), agents that
disconnect and reconnect 10 to 30 s later (flaps, with their events) and a few misbehaving
agents, at a short poll interval. The benchmark scrapes it without pause, plain
and gzip in turn, each on a new connection, until ``--minutes`` have passed, and records:

- RSS over time (from ``/proc``): start, end, peak, and the least-squares slope per minute
  after ``--warmup``;
- scrape latency until the last byte, plain and gzip;
- ``guestload_poll_duration_seconds`` after every poll the scrapes saw;
- stale series: every scrape (plain and gzip) is held against the same simulation replayed
  from the same seed (:mod:`bench.staleness`); a VM in a scrape that did not exist at the
  poll that exported it is a stale series, and so is a load series of a VM whose agent was
  away at every step that poll can have run at;
- how long stopped VMs stayed exported: events should drop them at once, the next full poll
  at the latest, so a VM still exported two poll cycles (plus one scrape round, the
  resolution of the scrapes) after it stopped is counted as late.

The replay knows at which step each VM stopped, not when the exporter's simulation clock
began: that origin is bounded from above by every scrape (a VM that started at step ``n`` is
in a scrape received at ``t``, so the origin is at most ``t - 5 s * n``). Times since a stop
are measured from that bound, so they are short by at most the fastest publication of a new
VM the run saw, never long. Every scrape's time, latency, ``guestload_polls_total`` and
newest VM go to the JSON too, showing whether a snapshot changed between full polls (events).

    python -m bench.soak --vms 10000 --churn 600 --flaps 60 --interval 5s --minutes 10
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import math
import re
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    SimulatedExporter,
    cpu_seconds,
    exit_on_sigterm,
    format_table,
    memory_bytes,
    percentile,
    scrape,
    summary,
    write_results,
)
from bench.staleness import PopulationReplay, check_scrape, exported_vms
from guestload.settings import parse_duration
from guestload.simulation import AgentFailures, Simulation
from guestload.sources.simulated import STEP_SECONDS
from guestload_lab.processes import ProcessRegistry, pid_alive

NODE = "bench-node"
DEFAULT_FAILURES = "absent=1%,old=1%,slow=0.05%,hung=0.05%"
_GAUGE = re.compile(r"^(guestload_\w+|process_resident_memory_bytes) (\S+)$", re.M)
_STATE = re.compile(r'^guestload_agent_state\{[^\n]*query="load",state="(\w+)"[^\n]*\} 1\.0$', re.M)
_MAX_EXAMPLES = 20


@dataclass(slots=True)
class _Observations:
    """Everything the scrape loop records."""

    started_monotonic: float
    seconds: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "gzip": []})
    body_bytes: dict[str, list[int]] = field(default_factory=lambda: {"plain": [], "gzip": []})
    scrape_errors: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since start, RSS bytes)."""
    load1: list[float] = field(default_factory=list)
    polls: dict[int, float] = field(default_factory=dict)
    """polls_total -> poll duration, for every poll a scrape saw last."""
    poll_failures: float = 0.0
    scrapes_checked: int = 0
    stale_scrapes: int = 0
    stale_series: int = 0
    stale_examples: list[str] = field(default_factory=list)
    invariant_violations: Counter[str] = field(default_factory=Counter)
    origin_upper: float = math.inf
    """Upper bound of the exporter's simulation origin (monotonic seconds)."""
    removals: list[tuple[float, tuple[int, ...]]] = field(default_factory=list)
    """(scrape sent at, stop steps of the VMs in it that the replay has seen stop)."""
    newest_start_steps: list[int] = field(default_factory=list)
    churned_vms_seen: set[tuple[str, str]] = field(default_factory=set)
    states: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, str, float, int, int, int]] = field(default_factory=list)
    """Per scrape: (sent, seconds since start; mode; latency s; polls_total, -1 if unread;
    newest start step in it; VMs in it)."""
    crashed: str | None = None


def _scrape_round(
    exporter: SimulatedExporter,
    replay: PopulationReplay,
    seen: _Observations,
    *,
    spawned: float,
    order: Sequence[bool],
) -> None:
    for compressed in order:
        mode = "gzip" if compressed else "plain"
        sent = time.monotonic()
        try:
            result = scrape("127.0.0.1", exporter.port, "/metrics", gzip=compressed)
        except (OSError, RuntimeError) as error:
            seen.scrape_errors.append(f"{mode}: {type(error).__name__}: {error}")
            continue
        received = time.monotonic()
        seen.seconds[mode].append(result.seconds)
        seen.body_bytes[mode].append(result.body_bytes)
        text = (gzip.decompress(result.body) if compressed else result.body).decode()
        newest, vms = _check(text, replay, seen, spawned=spawned, sent=sent, received=received)
        polls = -1 if compressed else _read_gauges(text, seen)
        seen.timeline.append(
            (round(sent - seen.started_monotonic, 2), mode, result.seconds, polls, newest, vms)
        )


def _check(
    text: str,
    replay: PopulationReplay,
    seen: _Observations,
    *,
    spawned: float,
    sent: float,
    received: float,
) -> tuple[int, int]:
    """Hold one scrape against the replay; its newest start step and its number of VMs."""
    # The origin is after the spawn, so the source's step now is at most this.
    latest_step = int((received - spawned) // STEP_SECONDS)
    replay.advance_to(latest_step + 1)
    exported = exported_vms(text)
    result = check_scrape(exported, replay, latest_step=latest_step)
    seen.scrapes_checked += 1
    seen.origin_upper = min(seen.origin_upper, received - result.newest_start_step * STEP_SECONDS)
    seen.newest_start_steps.append(result.newest_start_step)
    seen.removals.append((sent, result.stopped_steps))
    seen.churned_vms_seen.update(key for key in exported.series if replay.started.get(key, 0) > 0)
    if result.stale_vms:
        seen.stale_scrapes += 1
        seen.stale_series += result.stale_series
        for namespace, name in result.stale_vms:
            if len(seen.stale_examples) < _MAX_EXAMPLES:
                started = replay.started.get((namespace, name))
                stopped = replay.stopped.get((namespace, name))
                seen.stale_examples.append(
                    f"{namespace}/{name} started={started} stopped={stopped} "
                    f"in a scrape of step >= {result.newest_start_step}"
                )
    for name, keys in (
        ("load_without_ok", result.load_without_ok),
        ("load_from_silent_agent", result.load_from_silent_agent),
        ("state_count_wrong", result.state_count_wrong),
        ("uuid_wrong", result.uuid_wrong),
        ("load_while_agent_away", result.load_while_agent_away),
    ):
        seen.invariant_violations[name] += len(keys)
    return result.newest_start_step, result.vms


def _read_gauges(text: str, seen: _Observations) -> int:
    """Record the poll gauges of a plain scrape; its ``guestload_polls_total`` (-1: none)."""
    values = {match.group(1): float(match.group(2)) for match in _GAUGE.finditer(text)}
    polls = values.get("guestload_polls_total")
    duration = values.get("guestload_poll_duration_seconds")
    if polls is not None and duration is not None:
        seen.polls[int(polls)] = duration
    seen.poll_failures = values.get("guestload_poll_failures_total", seen.poll_failures)
    seen.states = Counter(_STATE.findall(text))
    return int(polls) if polls is not None else -1


def _late_removals(seen: _Observations, *, interval: float) -> dict[str, Any]:
    """Exported VMs that had stopped more than two poll cycles before the scrape was sent.

    Events should drop a stopped VM at once; at the latest, the next full poll lists the
    source again without it. That poll starts within one cycle of the stop and publishes
    within another. A cycle is the interval, or, when polls overrun it, the longest time
    between two new ``guestload_polls_total`` values the scrapes saw; the scrapes see those
    one round late at most, so the limit adds the longest round.
    """
    plain = [(sent, polls) for sent, mode, _, polls, _, _ in seen.timeline if mode == "plain"]
    changes = [b[0] for a, b in itertools.pairwise(plain) if b[1] != a[1]]
    gaps = [b - a for a, b in itertools.pairwise(changes)]
    rounds = [b[0] - a[0] for a, b in itertools.pairwise(plain)]
    cycle = max([interval, *gaps])
    limit = 2 * cycle + max(rounds, default=0.0)
    late = 0
    worst = 0.0
    for sent, stopped_steps in seen.removals:
        for step in stopped_steps:
            gone_for = sent - (seen.origin_upper + step * STEP_SECONDS)
            worst = max(worst, gone_for)
            if gone_for > limit:
                late += 1
    return {
        "late_series_vms": late,
        "late_limit_seconds": limit,
        "longest_poll_cycle_seen_seconds": cycle,
        "longest_exported_after_stop_seconds": worst,
    }


def _per_minute(samples: Sequence[tuple[float, int]]) -> list[float]:
    """The median RSS of each whole minute of the run (a partial last minute is left out)."""
    minutes: dict[int, list[int]] = {}
    for t, rss in samples:
        minutes.setdefault(int(t // 60), []).append(rss)
    whole = int(samples[-1][0] // 60)
    return [statistics.median(minutes[m]) for m in sorted(minutes) if m < whole]


def _rss_trend(
    samples: Sequence[tuple[float, int]], *, warmup: float, tail: float
) -> dict[str, Any]:
    """RSS figures; slopes per minute after ``warmup``, over its second half and the last
    ``tail`` seconds (all of it after warm-up when the run is shorter)."""
    settled = [(t, rss) for t, rss in samples if t >= warmup] or list(samples)
    slope = 0.0
    if len(settled) >= 2 and settled[-1][0] > settled[0][0]:
        fit = statistics.linear_regression([t for t, _ in settled], [r for _, r in settled])
        slope = fit.slope * 60.0
    half = settled[len(settled) // 2 :]
    second_half_slope = 0.0
    if len(half) >= 2 and half[-1][0] > half[0][0]:
        fit = statistics.linear_regression([t for t, _ in half], [r for _, r in half])
        second_half_slope = fit.slope * 60.0
    tail_from = samples[-1][0] - tail
    last = [(t, rss) for t, rss in settled if t >= tail_from]
    tail_slope = 0.0
    if len(last) >= 2 and last[-1][0] > last[0][0]:
        fit = statistics.linear_regression([t for t, _ in last], [r for _, r in last])
        tail_slope = fit.slope * 60.0
    return {
        "start_bytes": samples[0][1],
        "after_warmup_bytes": settled[0][1],
        "end_bytes": samples[-1][1],
        "max_bytes": max(r for _, r in samples),
        "min_after_warmup_bytes": min(r for _, r in settled),
        "median_after_warmup_bytes": statistics.median(r for _, r in settled),
        "slope_bytes_per_minute": slope,
        "second_half_slope_bytes_per_minute": second_half_slope,
        "tail_seconds": min(tail, samples[-1][0] - settled[0][0]),
        "tail_slope_bytes_per_minute": tail_slope,
        "per_minute_median_bytes": _per_minute(samples),
        "warmup_seconds": warmup,
        "samples": [[round(t, 1), r] for t, r in samples],
    }


def _latency(values: Sequence[float]) -> dict[str, float]:
    return {**summary(values), "p99": percentile(values, 0.99)}


def soak(
    *,
    simulation: Simulation,
    interval: str,
    minutes: float,
    warmup_seconds: float,
    tail_seconds: float = 1800.0,
    pause_seconds: float = 0.0,
    concurrency: int,
    workdir: Path,
) -> dict[str, Any]:
    """Run one exporter for ``minutes`` under continuous scrapes; the results."""
    interval_seconds = parse_duration(interval)
    replay = PopulationReplay(simulation=simulation, node=NODE)
    with ProcessRegistry() as registry:
        exporter = SimulatedExporter(
            registry=registry,
            workdir=workdir,
            vms=simulation.vms,
            interval=interval,
            node=NODE,
            seed=simulation.seed,
            extra_args=[
                "--simulated.churn",
                f"{simulation.churn_per_minute:g}",
                "--simulated.agent-failures",
                str(simulation.agent_failures),
                "--simulated.agent-flaps",
                f"{simulation.agent_flaps_per_minute:g}",
                "--collector.concurrency",
                str(concurrency),
            ],
        )
        spawned = time.monotonic()
        exporter.start()
        started = time.monotonic()
        cpu_start = cpu_seconds(exporter.pid)
        own_cpu_start = time.process_time()
        seen = _Observations(started_monotonic=started)
        deadline = started + minutes * 60
        rounds = 0
        while time.monotonic() < deadline:
            if not pid_alive(exporter.pid):
                seen.crashed = _tail(workdir / "guestload.log")
                break
            seen.rss.append((time.monotonic() - started, memory_bytes(exporter.pid)["rss"]))
            seen.load1.append(float(Path("/proc/loadavg").read_text().split()[0]))
            order = (False, True) if rounds % 2 == 0 else (True, False)
            _scrape_round(
                exporter,
                replay,
                seen,
                spawned=spawned,
                order=order,
            )
            rounds += 1
            if pause_seconds > 0:
                time.sleep(min(pause_seconds, max(0.0, deadline - time.monotonic())))
        wall = time.monotonic() - started
        own_cpu = time.process_time() - own_cpu_start
        alive = pid_alive(exporter.pid)
        cpu = cpu_seconds(exporter.pid) - cpu_start if alive else float("nan")
        if alive:
            seen.rss.append((wall, memory_bytes(exporter.pid)["rss"]))
        command = exporter.argv
        exporter.stop()
    log = (workdir / "guestload.log").read_text(errors="replace")
    polls = sorted(seen.polls)
    durations = [seen.polls[p] for p in polls]
    return {
        "vms": simulation.vms,
        "seed": simulation.seed,
        "churn_per_minute": simulation.churn_per_minute,
        "agent_failures": str(simulation.agent_failures),
        "agent_flaps_per_minute": simulation.agent_flaps_per_minute,
        "interval": interval,
        "concurrency": concurrency,
        "exporter_command": command,
        "wall_seconds": wall,
        "rounds": rounds,
        "exporter_alive_at_end": alive,
        "crash_log_tail": seen.crashed,
        "exporter_log_errors": [
            line for line in log.splitlines() if "level=error" in line or "Traceback" in line
        ][:_MAX_EXAMPLES],
        "exporter_cpu_share": cpu / wall if wall > 0 else float("nan"),
        "soak_cpu_share": own_cpu / wall if wall > 0 else float("nan"),
        "load1": {
            "min": min(seen.load1, default=float("nan")),
            "mean": statistics.fmean(seen.load1) if seen.load1 else float("nan"),
            "max": max(seen.load1, default=float("nan")),
        },
        "polls": {
            "done": (polls[-1] - polls[0]) if len(polls) >= 2 else 0,
            "total_at_end": polls[-1] if polls else 0,
            "failures_total": seen.poll_failures,
            "seen": len(polls),
            "duration_seconds": _latency(durations) if durations else None,
            "slower_than_interval": sum(1 for d in durations if d > interval_seconds),
        },
        "scrapes": {
            "plain": len(seen.seconds["plain"]),
            "gzip": len(seen.seconds["gzip"]),
            "errors": len(seen.scrape_errors),
            "error_examples": seen.scrape_errors[:_MAX_EXAMPLES],
        },
        "seconds": {mode: _latency(v) for mode, v in seen.seconds.items() if v},
        "body_bytes": {mode: statistics.median(v) for mode, v in seen.body_bytes.items() if v},
        "rss": (
            _rss_trend(seen.rss, warmup=warmup_seconds, tail=tail_seconds) if seen.rss else None
        ),
        "staleness": {
            "scrapes_checked": seen.scrapes_checked,
            "stale_scrapes": seen.stale_scrapes,
            "stale_series": seen.stale_series,
            "stale_examples": seen.stale_examples,
            **_late_removals(seen, interval=interval_seconds),
            "invariant_violations": dict(seen.invariant_violations),
            "steps_replayed": replay.step,
            "vms_started_during_run": sum(1 for s in replay.started.values() if s > 0),
            "vms_stopped_during_run": len(replay.stopped),
            "agent_flaps_during_run": replay.flaps,
            "started_vms_seen_exported": len(seen.churned_vms_seen),
            "newest_start_step_last_scrape": (
                seen.newest_start_steps[-1] if seen.newest_start_steps else 0
            ),
        },
        "agent_states_last_scrape": dict(seen.states),
        "timeline": seen.timeline,
    }


def failed_invariants(result: dict[str, Any]) -> list[str]:
    """What must hold after any soak, whatever the machine: empty when all held."""
    failures = []
    if not result["exporter_alive_at_end"]:
        failures.append(f"exporter exited: {result['crash_log_tail']}")
    if result["exporter_log_errors"]:
        failures.append(f"errors in the exporter's log: {result['exporter_log_errors'][:3]}")
    if result["scrapes"]["errors"]:
        failures.append(f"failed scrapes: {result['scrapes']['error_examples'][:3]}")
    staleness = result["staleness"]
    if staleness["stale_series"]:
        failures.append(f"stale series: {staleness['stale_examples'][:3]}")
    if staleness["late_series_vms"]:
        failures.append(f"VMs exported after they stopped: {staleness['late_series_vms']}")
    broken = {k: v for k, v in staleness["invariant_violations"].items() if v}
    if broken:
        failures.append(f"per-VM invariants broken: {broken}")
    if result["polls"]["failures_total"]:
        failures.append(f"failed polls: {result['polls']['failures_total']:g}")
    return failures


def table(result: dict[str, Any]) -> str:
    rss = result["rss"]
    polls = result["polls"]
    staleness = result["staleness"]
    mib = 2**20
    rows: list[list[object]] = [
        [
            "VMs, churn per minute, agent flaps per minute",
            f"{result['vms']:,}, {result['churn_per_minute']:g}, "
            f"{result['agent_flaps_per_minute']:g}",
        ],
        ["agent failures", result["agent_failures"]],
        ["interval, window", f"{result['interval']}, {result['wall_seconds']:.0f} s"],
        ["polls done (failed)", f"{polls['done']} ({polls['failures_total']:g})"],
    ]
    if polls["duration_seconds"] is not None:
        d = polls["duration_seconds"]
        rows.append(
            [
                "poll duration p50 / p99 / max s",
                f"{d['p50']:.2f} / {d['p99']:.2f} / {d['max']:.2f}",
            ]
        )
    for mode, s in result["seconds"].items():
        rows.append(
            [
                f"scrape {mode} p50 / p99 / max ms (n)",
                f"{s['p50'] * 1e3:.1f} / {s['p99'] * 1e3:.1f} / {s['max'] * 1e3:.1f} "
                f"({s['n']:.0f})",
            ]
        )
    rows.append(["scrape errors", result["scrapes"]["errors"]])
    if rss is not None:
        rows += [
            [
                "RSS start / after warm-up / end MiB",
                f"{rss['start_bytes'] / mib:.1f} / {rss['after_warmup_bytes'] / mib:.1f} / "
                f"{rss['end_bytes'] / mib:.1f}",
            ],
            [
                "RSS median / max MiB",
                f"{rss['median_after_warmup_bytes'] / mib:.1f} / {rss['max_bytes'] / mib:.1f}",
            ],
            [
                "RSS slope MiB/min (all, second half)",
                f"{rss['slope_bytes_per_minute'] / mib:+.2f}, "
                f"{rss['second_half_slope_bytes_per_minute'] / mib:+.2f}",
            ],
            [
                f"RSS slope MiB/min, last {rss['tail_seconds'] / 60:.1f} min",
                f"{rss['tail_slope_bytes_per_minute'] / mib:+.3f}",
            ],
            [
                "RSS median of each minute MiB",
                " ".join(f"{m / mib:.0f}" for m in rss["per_minute_median_bytes"]) or "-",
            ],
        ]
    rows += [
        [
            "CPU % of one core: exporter, this scraper",
            f"{result['exporter_cpu_share'] * 100:.0f}, {result['soak_cpu_share'] * 100:.0f}",
        ],
        [
            "load average 1m min / mean / max",
            "{min:.1f} / {mean:.1f} / {max:.1f}".format(**result["load1"]),
        ],
        [
            "VMs started / stopped during run (started seen)",
            f"{staleness['vms_started_during_run']} / {staleness['vms_stopped_during_run']} "
            f"({staleness['started_vms_seen_exported']})",
        ],
        ["agent flaps replayed", staleness["agent_flaps_during_run"]],
        ["scrapes checked", staleness["scrapes_checked"]],
        ["stale series (scrapes)", f"{staleness['stale_series']} ({staleness['stale_scrapes']})"],
        [
            f"VMs exported > {staleness['late_limit_seconds']:.1f} s after stop (limit)",
            staleness["late_series_vms"],
        ],
        [
            "longest exported after stop s (longest poll cycle)",
            f"{staleness['longest_exported_after_stop_seconds']:.1f} "
            f"({staleness['longest_poll_cycle_seen_seconds']:.1f})",
        ],
        [
            "per-VM invariant violations",
            sum(staleness["invariant_violations"].values()),
        ],
        [
            "agent states, last scrape",
            " ".join(f"{k}={v}" for k, v in sorted(result["agent_states_last_scrape"].items())),
        ],
    ]
    return format_table(["soak", "value"], rows)


def _tail(path: Path, characters: int = 2000) -> str:
    return path.read_text(errors="replace")[-characters:] if path.exists() else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--churn", type=float, default=600.0, help="VMs replaced per minute")
    parser.add_argument("--flaps", type=float, default=60.0, help="agents disconnecting per minute")
    parser.add_argument(
        "--agent-failures", default=DEFAULT_FAILURES, help="as --simulated.agent-failures"
    )
    parser.add_argument("--interval", default="5s", help="--collector.interval")
    parser.add_argument("--concurrency", type=int, default=8, help="--collector.concurrency")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to scrape")
    parser.add_argument(
        "--warmup", default="1m", help="start of the RSS slope (the first polls settle)"
    )
    parser.add_argument(
        "--slope-window", default="30m", help="the last stretch whose RSS slope is reported"
    )
    parser.add_argument(
        "--pause", default="0s", help="idle time between scrape rounds (0: scrape without pause)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "soak.json")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    simulation = Simulation(
        vms=args.vms,
        seed=args.seed,
        agent_failures=AgentFailures.parse(args.agent_failures),
        churn_per_minute=args.churn,
        agent_flaps_per_minute=args.flaps,
    )
    with tempfile.TemporaryDirectory(prefix="guestload-bench-soak-") as workdir:
        result = soak(
            simulation=simulation,
            interval=args.interval,
            minutes=args.minutes,
            warmup_seconds=parse_duration(args.warmup),
            tail_seconds=parse_duration(args.slope_window),
            pause_seconds=parse_duration(args.pause),
            concurrency=args.concurrency,
            workdir=Path(workdir),
        )
    failures = failed_invariants(result)
    print(table(result))
    write_results(
        args.out,
        {"benchmark": "soak", "result": result, "failed_invariants": failures},
    )
    print(f"wrote {args.out}")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
