"""Poll cost with real VMs: exporter CPU per domain-poll vs a bare loop of the same libvirt calls.

Boots ``--vms`` tiny VMs (TCG, slim image) under a private libvirt daemon from the lab harness
(``guestload_lab``), then alternates two phases of ``--seconds`` each, ``--rounds`` times:

* bare loop: a separate Python process that, every ``--interval``, makes the calls a poll
  makes — one ``getAllDomainStats(STATE|VCPU|BALLOON|BLOCK, RUNNING|NOWAIT)`` (the groups
  of the default host stats) and one
  ``guestInfo(VIR_DOMAIN_GUEST_INFO_LOAD)`` per domain (after setting the agent response
  timeout once) — and nothing else (``bench.peer`` adds the ``guest-get-cpustats``
  passthrough a default poll makes too);
* exporter: ``guestload serve`` against the same daemon, polling every ``--interval``, with
  its default queries (the load, and guest CPU time through ``guest-get-cpustats``);
* exporter, load only: the same with ``--no-collector.guest-cpu``.

Each phase's CPU time over its window (the exporter's threads from ``/proc/<pid>/task/*/
schedstat``, to the nanosecond; the bare loop's from ``getrusage``), divided by the
domain-polls it made, gives CPU per domain-poll; the ratio exporter / bare is the overhead,
and exporter / exporter-load-only is what asking guest CPU times costs (target: 1.3).

Every phase also runs against a second, empty libvirt daemon (no domain): its CPU per poll is
the phase's fixed cost, and what a poll of the fleet costs above it, per domain, is the
marginal cost of a domain. The fixed cost (health families, HTTP server, event loop, the
bulk stats call) does not grow with the fleet; the marginal cost is what a large host pays.
Every VM and daemon started here is stopped at the end.

    python -m bench.poll --vms 5 --interval 2s --seconds 90 --rounds 2

``--uri URI`` skips the VMs and measures against an existing libvirt URI instead, and
``--empty-uri URI`` names the empty one (the smoke test uses libvirt's test driver: no VM,
no guest agent).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu

from bench.common import (
    RESULTS_DIR,
    exit_on_sigterm,
    format_table,
    metric_values,
    milliseconds,
    scrape,
    threads_cpu_seconds,
    wait_for_polls,
    write_results,
)
from guestload.settings import parse_duration
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import free_port

TARGET_RATIO = 1.5
TARGET_CPUSTATS_RATIO = 1.3
"""Poll cost per domain with guest CPU times over the cost with the load alone."""
EXPORTER_PHASES = {"exporter": (), "exporter_load_only": ("--no-collector.guest-cpu",)}
"""Exporter phases and the extra flags each runs with."""
_STATS_GROUPS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)
_STATS_FLAGS = (
    libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING
    | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
)
_CPUSTATS_COMMAND = '{"execute":"guest-get-cpustats"}'


def bare_loop(
    *, uri: str, interval: float, seconds: float, cpustats: bool = False
) -> dict[str, float]:
    """The libvirt calls of a poll, in a loop, timed on this process's CPU clock.

    With ``cpustats`` each domain is also asked ``guest-get-cpustats`` through the agent
    passthrough, as a poll with its default queries does.
    """
    libvirt.registerErrorHandler(lambda _context, _error: None, None)
    connection = libvirt.open(uri)
    timeouts_set: set[str] = set()
    calls = 0
    errors = 0

    def one_poll() -> None:
        nonlocal calls, errors
        for domain, _stats in connection.getAllDomainStats(_STATS_GROUPS, _STATS_FLAGS):
            try:
                uuid = domain.UUIDString()
                if uuid not in timeouts_set:
                    timeouts_set.add(uuid)
                    domain.agentSetResponseTimeout(1, 0)
                domain.guestInfo(libvirt.VIR_DOMAIN_GUEST_INFO_LOAD, 0)
                if cpustats:
                    libvirt_qemu.qemuAgentCommand(domain, _CPUSTATS_COMMAND, 1, 0)
            except libvirt.libvirtError:
                errors += 1
            calls += 1

    one_poll()  # first calls after connecting are slow: not steady state
    calls = errors = 0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.monotonic()
    polls = 0
    while time.monotonic() - started < seconds:
        one_poll()
        polls += 1
        time.sleep(max(0.0, started + polls * interval - time.monotonic()))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    connection.close()
    return {
        "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_before,
        "wall_seconds": time.monotonic() - started,
        "polls": float(polls),
        "domain_polls": float(calls),
        "errors": float(errors),
    }


def run_bare(
    *, uri: str, interval: float, seconds: float, cpustats: bool = False
) -> dict[str, float]:
    """The bare loop in its own process, like the exporter."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.poll",
            "--bare-loop",
            "--uri",
            uri,
            "--interval",
            f"{interval}s",
            "--seconds",
            str(seconds),
            *(["--bare-cpustats"] if cpustats else []),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 120,
        cwd=Path(__file__).resolve().parents[1],
    )
    if result.returncode != 0:
        raise RuntimeError(f"bare loop failed: {result.stderr[-2000:]}")
    values: dict[str, float] = json.loads(result.stdout)
    return values


def run_exporter(
    *,
    uri: str,
    interval: float,
    seconds: float,
    workdir: Path,
    registry: ProcessRegistry,
    flags: tuple[str, ...] = (),
    scrape_every: float | None = None,
    cpu_clock: Callable[[int], float] = threads_cpu_seconds,
) -> dict[str, float]:
    """``guestload serve`` against ``uri``; CPU and domain-polls over a steady window.

    With ``scrape_every`` the window also scrapes ``/metrics`` (text format, gzip) at that
    period, as a Prometheus would; otherwise nothing scrapes it meanwhile. ``cpu_clock`` reads
    the process's CPU seconds (its live threads' by default).
    """
    port = free_port()
    timeout = min(5.0, interval / 2)
    process = registry.spawn(
        [
            sys.executable,
            "-m",
            "guestload",
            "serve",
            "--libvirt.uri",
            uri,
            "--collector.interval",
            f"{interval}s",
            "--collector.agent-timeout",
            f"{timeout}s",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--node",
            "bench-node",
            "--log.level",
            "warn",
            *flags,
        ],
        log_path=workdir / "guestload.log",
    )
    try:

        def counters() -> tuple[float, float]:
            """Polls so far, and running domains in the last one."""
            text = scrape("127.0.0.1", port, "/metrics", gzip=False).body.decode()
            polls = sum(metric_values(text, "guestload_polls_total"))
            domains = sum(metric_values(text, "guestload_domains"))
            return polls, domains

        wait_for_polls(
            process,
            lambda: counters()[0],
            count=2,
            timeout=120,
            log_path=workdir / "guestload.log",
        )
        polls_before, domains = counters()
        cpu_before = cpu_clock(process.pid)
        started = time.monotonic()
        scrapes = 0
        while scrape_every is not None and time.monotonic() - started < seconds:
            scrape("127.0.0.1", port, "/metrics", gzip=True)
            scrapes += 1
            time.sleep(max(0.0, started + scrapes * scrape_every - time.monotonic()))
        time.sleep(max(0.0, started + seconds - time.monotonic()))
        cpu = cpu_clock(process.pid) - cpu_before
        wall = time.monotonic() - started
        polls, domains_after = counters()
    finally:
        registry.stop(process)
    return {
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "polls": polls - polls_before,
        "domain_polls": (polls - polls_before) * min(domains, domains_after),
        "scrapes": float(scrapes),
    }


@contextmanager
def lab_vms(count: int, workdir: Path) -> Iterator[tuple[str, str]]:
    """Boot ``count`` tiny VMs under a private libvirt daemon, and start an empty one.

    Yields both URIs (fleet, empty); stops all.
    """
    from guestload_lab.deps import ensure_dependencies  # noqa: PLC0415 - only for real VMs
    from guestload_lab.image import build_image  # noqa: PLC0415
    from guestload_lab.libvirtd import PrivateLibvirtd  # noqa: PLC0415
    from guestload_lab.vm import Hypervisor, VmSpec, wait_all_agents  # noqa: PLC0415

    image = build_image(ensure_dependencies(), with_stress=False)
    daemon = PrivateLibvirtd(workdir=workdir / "libvirt")
    empty = PrivateLibvirtd(workdir=workdir / "libvirt-empty")
    daemon.start()
    empty.start()
    try:
        with Hypervisor(daemon.uri) as hypervisor:
            vms = [
                hypervisor.create(
                    VmSpec(name=f"bench-{i}", memory_mib=128), image, log_dir=workdir / "vms"
                )
                for i in range(count)
            ]
            try:
                wait_all_agents(vms, timeout=240)
                for vm in vms:
                    vm.guest_load()
                yield daemon.uri, empty.uri
            finally:
                for vm in vms:
                    vm.destroy()
    finally:
        empty.stop()
        daemon.stop()


PHASES = ("bare", *EXPORTER_PHASES)


def measure(
    *,
    uri: str,
    empty_uri: str | None,
    interval: float,
    seconds: float,
    rounds: int,
    workdir: Path,
) -> dict[str, Any]:
    phases: dict[str, list[dict[str, float]]] = {name: [] for name in PHASES}
    empty: dict[str, list[dict[str, float]]] = {name: [] for name in PHASES}
    targets = [(uri, phases)] + ([(empty_uri, empty)] if empty_uri else [])
    with ProcessRegistry() as registry:
        for round_number in range(rounds):
            for target, runs in targets:
                runs["bare"].append(run_bare(uri=target, interval=interval, seconds=seconds))
                for name, flags in EXPORTER_PHASES.items():
                    runs[name].append(
                        run_exporter(
                            uri=target,
                            interval=interval,
                            seconds=seconds,
                            workdir=workdir / f"round-{round_number}-{name}-{len(runs[name])}",
                            registry=registry,
                            flags=flags,
                        )
                    )
            print(f"round {round_number + 1} of {rounds} done", flush=True)
    per_domain = {
        name: [p["cpu_seconds"] / p["domain_polls"] for p in runs if p["domain_polls"] > 0]
        for name, runs in phases.items()
    }
    medians = {name: statistics.median(values) for name, values in per_domain.items()}
    result: dict[str, Any] = {
        "uri": uri,
        "empty_uri": empty_uri,
        "interval_seconds": interval,
        "seconds_per_phase": seconds,
        "rounds": rounds,
        "phases": phases,
        "cpu_seconds_per_domain_poll": per_domain,
        "median_cpu_seconds_per_domain_poll": medians,
        "ratio": _ratio(medians["exporter"], medians["bare"]),
        "cpustats_ratio": _ratio(medians["exporter"], medians["exporter_load_only"]),
    }
    if empty_uri:
        result.update(split_fixed_and_marginal(phases, empty))
    return result


def split_fixed_and_marginal(
    fleet: dict[str, list[dict[str, float]]], empty: dict[str, list[dict[str, float]]]
) -> dict[str, Any]:
    """Fixed CPU per poll (the empty daemon) and marginal CPU per domain, median per phase."""
    fixed = {name: statistics.median(_per_poll(runs)) for name, runs in empty.items()}
    marginal: dict[str, float] = {}
    for name, runs in fleet.items():
        domains = statistics.median(r["domain_polls"] / r["polls"] for r in runs if r["polls"])
        if domains > 0:
            marginal[name] = (statistics.median(_per_poll(runs)) - fixed[name]) / domains
    return {
        "phases_empty": empty,
        "fixed_cpu_seconds_per_poll": fixed,
        "marginal_cpu_seconds_per_domain": marginal,
        "marginal_ratio": _ratio(marginal.get("exporter", 0.0), marginal.get("bare", 0.0)),
        "marginal_ratio_load_only": _ratio(
            marginal.get("exporter_load_only", 0.0), marginal.get("bare", 0.0)
        ),
        "marginal_cpustats_ratio": _ratio(
            marginal.get("exporter", 0.0), marginal.get("exporter_load_only", 0.0)
        ),
    }


def _per_poll(runs: list[dict[str, float]]) -> list[float]:
    return [r["cpu_seconds"] / r["polls"] for r in runs if r["polls"] > 0]


def _ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``; None when a window was too short to measure any CPU."""
    return numerator / denominator if numerator > 0 and denominator > 0 else None


def _format_ratio(ratio: float | None) -> str:
    return "n/a (no CPU time measured)" if ratio is None else f"{ratio:.2f}"


def table(result: dict[str, Any]) -> str:
    fixed = result.get("fixed_cpu_seconds_per_poll", {})
    marginal = result.get("marginal_cpu_seconds_per_domain", {})
    rows: list[list[object]] = []
    for name in PHASES:
        runs = result["phases"][name]
        rows.append(
            [
                name,
                sum(int(r["domain_polls"]) for r in runs),
                sum(r["cpu_seconds"] for r in runs),
                result["median_cpu_seconds_per_domain_poll"][name] * 1000,
                milliseconds(fixed.get(name)),
                milliseconds(marginal.get(name)),
            ]
        )
    headers = [
        "phase",
        "domain-polls",
        "CPU s",
        "CPU ms per domain-poll (median)",
        "fixed ms per poll",
        "marginal ms per domain",
    ]
    lines = [
        format_table(headers, rows),
        "",
        f"overhead ratio exporter / bare, per domain-poll: {_format_ratio(result['ratio'])}"
        f" (target <= {TARGET_RATIO})",
        "guest CPU times, exporter / exporter_load_only, per domain-poll: "
        f"{_format_ratio(result['cpustats_ratio'])} (target <= {TARGET_CPUSTATS_RATIO})",
    ]
    if marginal:
        lines += [
            "marginal per domain, exporter / bare: "
            f"{_format_ratio(result['marginal_ratio'])} (target <= {TARGET_RATIO});"
            f" load only / bare: {_format_ratio(result['marginal_ratio_load_only'])}",
            "marginal per domain, guest CPU times, exporter / exporter_load_only: "
            f"{_format_ratio(result['marginal_cpustats_ratio'])}",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.poll", description=__doc__)
    parser.add_argument("--vms", type=int, default=5, help="tiny VMs to boot")
    parser.add_argument("--uri", help="measure against this libvirt URI; boot no VMs")
    parser.add_argument(
        "--empty-uri", help="with --uri: a libvirt URI without running domains, for fixed costs"
    )
    parser.add_argument("--interval", default="2s", help="poll interval of both phases")
    parser.add_argument("--seconds", type=float, default=90.0, help="measured window per phase")
    parser.add_argument("--rounds", type=int, default=2, help="bare/exporter phase pairs")
    parser.add_argument("--bare-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-cpustats", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "poll.json")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    interval = parse_duration(args.interval)
    if args.bare_loop:
        result = bare_loop(
            uri=args.uri, interval=interval, seconds=args.seconds, cpustats=args.bare_cpustats
        )
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="guestload-bench-poll-") as workdir_name:
        workdir = Path(workdir_name)
        if args.uri:
            result = measure(
                uri=args.uri,
                empty_uri=args.empty_uri,
                interval=interval,
                seconds=args.seconds,
                rounds=args.rounds,
                workdir=workdir,
            )
            result["vms"] = 0
        else:
            with lab_vms(args.vms, workdir) as (uri, empty_uri):
                result = measure(
                    uri=uri,
                    empty_uri=empty_uri,
                    interval=interval,
                    seconds=args.seconds,
                    rounds=args.rounds,
                    workdir=workdir,
                )
            result["vms"] = args.vms
    print(table(result))
    write_results(args.out, {"benchmark": "poll", "result": result})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
