"""Poll-cycle wall time on a simulated host, with and without hung guest agents.

Runs the exporter's own poller (``guestload.polling.poller.Poller``, the code ``guestload
serve`` runs) in this process against the simulated source, for a few poll intervals per case. A
hung agent blocks its call until the agent timeout, as libvirt's response timeout does. For
every healthy VM the benchmark records when each of its guest-load reads answered; the largest
gap between two answers (or from the last answer to the end of the run) is the age its exported
sample can reach. Target: no healthy VM's sample older than one interval (a VM is counted late
when the gap exceeds 1.1 intervals: beyond scheduling jitter, it missed a poll).

python -m bench.pollcycle --vms 100,1000 --hung 0,10 --interval 30s --polls 4
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, format_table, write_results
from guestload.identity import IdentityResolver
from guestload.model import (
    AgentState,
    ConnectionHealth,
    DomainInventory,
    QueryReading,
    Snapshot,
    SourceFacts,
)
from guestload.polling.poller import Poller
from guestload.queries.load import LOAD
from guestload.queries.query import GuestQuery
from guestload.settings import Settings, parse_duration
from guestload.simulation import AGENT_BEHAVIOUR_KEY, AgentBehaviour, AgentFailures, Simulation
from guestload.sources.protocol import EventListener, Identify
from guestload.sources.simulated import SimulatedSource

LATE_FACTOR = 1.1
"""A healthy VM is late when two of its answers are more than 1.1 intervals apart: polls start
exactly one interval apart, so anything beyond scheduling jitter means it missed a poll."""


class AnswerLog:
    """Wraps a source and notes when each domain's load query answered with a load."""

    def __init__(self, source: SimulatedSource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self.answers: dict[str, list[float]] = {}

    def connect(self) -> None:
        self.source.connect()

    def close(self) -> None:
        self.source.close()

    def list_running_domains(self) -> Sequence[DomainInventory]:
        return self.source.list_running_domains()

    def query_guest(
        self, uuid: str, queries: Sequence[GuestQuery], timeout_seconds: float
    ) -> Mapping[str, QueryReading]:
        readings = self.source.query_guest(uuid, queries, timeout_seconds)
        reading = readings.get(LOAD.name)
        if reading is not None and reading.state is AgentState.OK:
            answered = time.monotonic()
            with self._lock:
                self.answers.setdefault(uuid, []).append(answered)
        return readings

    def set_event_listener(self, listener: EventListener | None) -> None:
        self.source.set_event_listener(listener)

    def facts(self) -> SourceFacts:
        return self.source.facts()

    def connection_health(self, identify: Identify) -> tuple[ConnectionHealth, ...] | None:
        return self.source.connection_health(identify)

    def unreachable_advice(self, error: str) -> str:
        return self.source.unreachable_advice(error)


def run_case(
    *,
    vms: int,
    hung_share: float,
    interval: float,
    agent_timeout: float,
    concurrency: int,
    polls: int,
    latency: float,
) -> dict[str, Any]:
    """Poll ``polls`` times; poll durations and the healthy VMs' largest answer gaps."""
    source = SimulatedSource(
        simulation=Simulation(
            vms=vms,
            agent_failures=AgentFailures(hung=hung_share),
            agent_latency_seconds=latency,
        )
    )
    log = AnswerLog(source)
    snapshots: list[Snapshot] = []
    poller = Poller(
        source=log,
        queries=Settings(node="bench-node").queries(),
        identity=IdentityResolver(node="bench-node", default_namespace="libvirt"),
        poll_interval_seconds=interval,
        agent_timeout_seconds=agent_timeout,
        concurrency=concurrency,
        agent_backoff_max_seconds=max(900.0, interval),
        on_snapshot=snapshots.append,
        build_info={},
    )
    thread = threading.Thread(target=poller.run, name="bench-poller", daemon=True)
    started = time.monotonic()
    thread.start()
    # The first poll starts at once; stop just before poll number polls + 1 would start.
    time.sleep(interval * polls - 0.5)
    ended = time.monotonic()
    poller.stop()
    thread.join(timeout=agent_timeout * 3 + interval)
    poller.close()
    healthy = [
        domain.uuid
        for domain in source.list_running_domains()
        if domain.metadata[AGENT_BEHAVIOUR_KEY] == AgentBehaviour.HEALTHY
    ]
    gaps: list[float] = []
    missed = 0
    for uuid in healthy:
        answers = [*log.answers.get(uuid, []), ended]
        gap = max((b - a for a, b in itertools.pairwise(answers)), default=math.inf)
        gaps.append(gap)
        missed += max(0, polls - len(answers) + 1)
    durations = sorted(
        {
            (s.polls_total, s.last_poll_duration_seconds)
            for s in snapshots
            if s.last_poll_duration_seconds is not None
        }
    )
    poll_seconds = [d for _, d in durations]
    first_answers = [log.answers[u][0] - started for u in healthy if u in log.answers]
    final = snapshots[-1] if snapshots else None
    states: dict[str, int] = {}
    if final is not None:
        for domain in final.domains:
            state = str(domain.state(LOAD.name))
            states[state] = states.get(state, 0) + 1
    return {
        "vms": vms,
        "hung_share": hung_share,
        "healthy_vms": len(healthy),
        "interval_seconds": interval,
        "agent_timeout_seconds": agent_timeout,
        "concurrency": concurrency,
        "agent_latency_seconds": latency,
        "polls": len(poll_seconds),
        "poll_seconds": poll_seconds,
        "poll_seconds_p50": statistics.median(poll_seconds) if poll_seconds else None,
        "poll_seconds_max": max(poll_seconds) if poll_seconds else None,
        "first_healthy_answer_seconds_max": max(first_answers) if first_answers else None,
        "first_healthy_answer_seconds_p50": (
            statistics.median(first_answers) if first_answers else None
        ),
        "healthy_never_answered": len(healthy) - len(first_answers),
        "healthy_max_gap_seconds": max(gaps) if gaps else None,
        "healthy_late": sum(g > interval * LATE_FACTOR for g in gaps),
        "healthy_missed_polls": missed,
        "final_states": states,
    }


def _pair(median: float | None, largest: float | None) -> str:
    if median is None or largest is None:
        return "none"
    return f"{median:.2f} / {largest:.2f}"


def table(results: list[dict[str, Any]]) -> str:
    headers = [
        "VMs",
        "hung",
        "interval s",
        "polls",
        "poll p50 s",
        "poll max s",
        "first healthy sample p50 / max s",
        "healthy max gap s",
        "healthy late",
        "final states",
    ]
    rows = [
        [
            r["vms"],
            f"{r['hung_share'] * 100:g}%",
            r["interval_seconds"],
            r["polls"],
            r["poll_seconds_p50"],
            r["poll_seconds_max"],
            _pair(r["first_healthy_answer_seconds_p50"], r["first_healthy_answer_seconds_max"]),
            r["healthy_max_gap_seconds"],
            f"{r['healthy_late']} of {r['healthy_vms']}",
            " ".join(f"{k}={v}" for k, v in sorted(r["final_states"].items())),
        ]
        for r in results
    ]
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pollcycle", description=__doc__)
    parser.add_argument("--vms", default="100,1000", help="comma-separated VM counts")
    parser.add_argument("--hung", default="0,10", help="comma-separated hung-agent percentages")
    parser.add_argument("--interval", default="30s", help="poll interval")
    parser.add_argument("--agent-timeout", default="5s", help="guest-agent call timeout")
    parser.add_argument("--concurrency", type=int, default=8, help="guest-agent calls in parallel")
    parser.add_argument("--polls", type=int, default=4, help="polls per case")
    parser.add_argument(
        "--agent-latency", default="2ms", help="healthy agent answer time (real: ~1-3 ms)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "pollcycle.json")
    args = parser.parse_args(argv)
    results = []
    for vms in (int(v) for v in args.vms.split(",")):
        for hung in (float(h) / 100 for h in args.hung.split(",")):
            result = run_case(
                vms=vms,
                hung_share=hung,
                interval=parse_duration(args.interval),
                agent_timeout=parse_duration(args.agent_timeout),
                concurrency=args.concurrency,
                polls=args.polls,
                latency=parse_duration(args.agent_latency),
            )
            results.append(result)
            print(f"measured {vms} VMs, {hung:.0%} hung", flush=True)
    print(table(results))
    write_results(args.out, {"benchmark": "pollcycle", "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
