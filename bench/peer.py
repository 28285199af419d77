"""Per-VM CPU of a poll against the exporter users install today: Debian's libvirt exporter.

Debian's ``prometheus-libvirt-exporter`` (kumina 0.2) reads libvirt's stats of every domain
on every scrape and asks no guest agent. This benchmark boots ``--vms`` tiny VMs (TCG, slim
image) under a private libvirt daemon from the lab harness (``guestload_lab``, as
``bench.poll`` does), then runs ``--rounds`` rounds of four phases of ``--seconds`` each,
in turn, against that one daemon:

* guestload: ``guestload serve`` polling every ``--interval`` with its default queries (the
  load, and guest CPU times through ``guest-get-cpustats``) and default host stats, and
  scraped once per ``--interval`` (each poll is one collection);
* guestload, not scraped: the same, with nothing scraping it (what a poll alone costs);
* prometheus-libvirt-exporter: the peer, scraped once per ``--interval`` as guestload is
  (each scrape is one collection);
* libvirt calls alone: ``bench.poll``'s bare loop making exactly the libvirt calls of a
  default poll (the bulk stats call, ``guestInfo(LOAD)`` and the ``guest-get-cpustats``
  passthrough per domain) and nothing else: the floor of any exporter asking both questions.

Each exporter's CPU is read from its process CPU clock (``clock_getcpuclockid``: every thread,
those that ended included, to the nanosecond; guestload answers each scrape on a thread of its
own) over the window (the bare loop's from ``getrusage``), divided by VMs times collections. Both
exporters are scraped alike, as a Prometheus scrapes (text format with gzip, one fresh
connection a scrape, from this process, whose CPU is not counted): each pays for serving.
The peer is installed with the project's apt script when missing. Every VM, daemon and
exporter started here is stopped at the end.

    python -m bench.peer --vms 8 --interval 1s --seconds 30 --rounds 2

``--uri URI`` skips the VMs and measures against an existing libvirt URI instead (the smoke
test uses libvirt's test driver: one domain, no guest agent).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import poll
from bench.common import (
    RESULTS_DIR,
    exit_on_sigterm,
    format_table,
    metric_values,
    milliseconds,
    process_cpu_seconds,
    scrape,
    write_results,
)
from guestload.settings import parse_duration
from guestload_lab.deps import install_system_packages
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import free_port

PEER = "prometheus-libvirt-exporter"
"""The peer's command, from Debian's package of the same name."""
PHASES = ("guestload", "guestload_unscraped", "peer", "bare")
LABELS = {
    "guestload": "guestload",
    "guestload_unscraped": "guestload, not scraped",
    "peer": PEER,
    "bare": "libvirt calls alone",
}


def peer_command() -> str:
    """The peer's executable, installed with the project's apt script if missing."""
    found = shutil.which(PEER)
    if found is None:
        install_system_packages()
        found = shutil.which(PEER)
    if found is None:
        raise RuntimeError(f"{PEER} is not installed and the apt script did not install it")
    return found


def _scrape_peer(port: int) -> str:
    """What a scrape of the peer gets, asked for as guestload's are (text format, gzip)."""
    return gzip.decompress(scrape("127.0.0.1", port, "/metrics", gzip=True).body).decode()


def run_peer(
    *,
    uri: str,
    interval: float,
    seconds: float,
    workdir: Path,
    registry: ProcessRegistry,
) -> dict[str, float]:
    """The peer against ``uri``, scraped every ``interval``; CPU over a steady window."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    process = registry.spawn(
        [
            peer_command(),
            "--libvirt.uri",
            uri,
            "--web.listen-address",
            f"127.0.0.1:{port}",
        ],
        log_path=workdir / "peer.log",
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError((workdir / "peer.log").read_text(errors="replace"))
            try:
                text = _scrape_peer(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{PEER} did not answer in 60 s") from None
                time.sleep(0.2)
        _scrape_peer(port)  # the first collections connect: not steady state
        domains = min(metric_values(text, "libvirt_domains_number") or [0.0])
        cpu_before = process_cpu_seconds(process.pid)
        started = time.monotonic()
        scrapes = 0
        while time.monotonic() - started < seconds:
            text = _scrape_peer(port)
            scrapes += 1
            domains = min([domains, *metric_values(text, "libvirt_domains_number")])
            time.sleep(max(0.0, started + scrapes * interval - time.monotonic()))
        cpu = process_cpu_seconds(process.pid) - cpu_before
        wall = time.monotonic() - started
    finally:
        registry.stop(process)
    return {
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "polls": float(scrapes),
        "domain_polls": scrapes * domains,
    }


def measure(
    *, uri: str, interval: float, seconds: float, rounds: int, workdir: Path
) -> dict[str, Any]:
    phases: dict[str, list[dict[str, float]]] = {name: [] for name in PHASES}
    with ProcessRegistry() as registry:
        for number in range(rounds):
            round_dir = workdir / f"round-{number}"
            phases["guestload"].append(
                poll.run_exporter(
                    uri=uri,
                    interval=interval,
                    seconds=seconds,
                    workdir=round_dir,
                    registry=registry,
                    scrape_every=interval,
                    cpu_clock=process_cpu_seconds,
                )
            )
            phases["guestload_unscraped"].append(
                poll.run_exporter(
                    uri=uri,
                    interval=interval,
                    seconds=seconds,
                    workdir=round_dir / "unscraped",
                    registry=registry,
                    cpu_clock=process_cpu_seconds,
                )
            )
            phases["peer"].append(
                run_peer(
                    uri=uri,
                    interval=interval,
                    seconds=seconds,
                    workdir=round_dir,
                    registry=registry,
                )
            )
            phases["bare"].append(
                poll.run_bare(uri=uri, interval=interval, seconds=seconds, cpustats=True)
            )
            print(round_table(number, {name: runs[-1] for name, runs in phases.items()}))
    per_vm = {name: [_per_vm(run) for run in runs] for name, runs in phases.items()}
    medians = {
        name: statistics.median([v for v in values if v is not None] or [0.0])
        for name, values in per_vm.items()
    }
    return {
        "uri": uri,
        "interval_seconds": interval,
        "seconds_per_phase": seconds,
        "rounds": rounds,
        "phases": phases,
        "cpu_seconds_per_vm_collection": per_vm,
        "median_cpu_seconds_per_vm_collection": medians,
        "ratio": (
            medians["guestload"] / medians["peer"]
            if medians["guestload"] > 0 and medians["peer"] > 0
            else None
        ),
    }


def _per_vm(run: dict[str, float]) -> float | None:
    return run["cpu_seconds"] / run["domain_polls"] if run["domain_polls"] > 0 else None


def round_table(number: int, runs: dict[str, dict[str, float]]) -> str:
    rows = [
        [
            f"{number + 1}",
            LABELS[name],
            int(run["polls"]),
            int(run["domain_polls"]),
            run["cpu_seconds"],
            milliseconds(_per_vm(run)),
        ]
        for name, run in runs.items()
    ]
    headers = ["round", "phase", "collections", "VM-collections", "CPU s", "CPU ms per VM"]
    return format_table(headers, rows)


def summary(result: dict[str, Any]) -> str:
    medians = result["median_cpu_seconds_per_vm_collection"]
    ratio = result["ratio"]
    return (
        f"per-VM CPU: guestload {milliseconds(medians['guestload'])} ms vs {PEER} "
        f"{milliseconds(medians['peer'])} ms "
        f"(ratio {'n/a' if ratio is None else f'{ratio:.2f}'}); "
        f"libvirt calls alone {milliseconds(medians['bare'])} ms; "
        f"guestload not scraped {milliseconds(medians['guestload_unscraped'])} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__)
    parser.add_argument("--vms", type=int, default=8, help="tiny VMs to boot")
    parser.add_argument("--uri", help="measure against this libvirt URI; boot no VMs")
    parser.add_argument("--interval", default="1s", help="poll and scrape interval")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window per phase")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the four phases")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "peer.json")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    interval = parse_duration(args.interval)
    peer_command()
    with tempfile.TemporaryDirectory(prefix="guestload-bench-peer-") as workdir_name:
        workdir = Path(workdir_name)
        if args.uri:
            result = measure(
                uri=args.uri,
                interval=interval,
                seconds=args.seconds,
                rounds=args.rounds,
                workdir=workdir,
            )
            result["vms"] = 0
        else:
            with poll.lab_vms(args.vms, workdir) as (uri, _empty_uri):
                result = measure(
                    uri=uri,
                    interval=interval,
                    seconds=args.seconds,
                    rounds=args.rounds,
                    workdir=workdir,
                )
            result["vms"] = args.vms
    result["summary"] = summary(result)
    write_results(args.out, {"benchmark": "peer", "result": result})
    print(f"wrote {args.out}")
    print(result["summary"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
