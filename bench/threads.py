"""CPU per poll of the served process, by thread: where a poll's CPU goes beyond its calls.

Runs ``guestload serve`` polling ``--vms`` VMs every second, scraped once a second with gzip
as ``bench.peer`` scrapes (or, with ``--unscraped``, not at all), ``--rounds`` times for
``--seconds`` each, and reads over the window:

* the process's CPU clock (every thread, those that ended included: ``bench.common``);
* each live thread's CPU time and how often the kernel put it on a CPU (``/proc/<pid>/task/
  */schedstat``), summed by thread name. Python does not name its threads for the kernel, so
  the process runs under this module's ``--serve`` mode, which names each thread after its
  ``threading`` name (``prctl``, the trailing number dropped) before running ``guestload
  serve``; the main thread (the poller's) is ``main``, and threads started without
  ``threading`` are ``conn`` (the server's connection threads). The CPU of threads that
  ended in the window is the process's less its live threads'.

Sources: ``--source simulated`` (no libvirt: the agents answer in-process, the listing is
the simulation's), ``--source test-driver`` (libvirt's test driver behind a private
libvirt daemon: real RPCs, keepalives and the event loop, but no guest agent, so each query
answers ``unsupported``; ``--collector.agent-backoff-max 1s`` has them asked every poll) or
``--source lab-vms`` (``--vms`` tiny real VMs under a private libvirt daemon, booted as
``bench.peer`` boots them: every query is answered by a real guest agent).

    python -m bench.threads --source simulated --seconds 8 --rounds 3
    python -m bench.threads --source test-driver --serve-args "--collector.concurrency 1"
    python -m bench.threads --source lab-vms --vms 8 --seconds 20 --rounds 3
"""

from __future__ import annotations

import argparse
import ctypes
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    exit_on_sigterm,
    format_table,
    metric_values,
    process_cpu_seconds,
    scrape,
    wait_for_polls,
    write_results,
)
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import free_port

_PR_SET_NAME = 15
ENDED = "(ended threads)"


def _name_threads() -> None:
    """Name every thread started from now on for the kernel (``comm``), as ``threading``
    names it; threads started with ``_thread`` are ``conn``."""
    import _thread  # noqa: PLC0415 - only in the --serve child

    libc = ctypes.CDLL(None)

    def set_name(name: str) -> None:
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)

    set_name("main")
    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def named_bootstrap(self: threading.Thread) -> None:
        set_name(self.name.rstrip("0123456789-") or self.name)
        bootstrap(self)

    threading.Thread._bootstrap_inner = named_bootstrap  # type: ignore[attr-defined]
    start_new_thread = _thread.start_new_thread

    def named_start(function: Callable[..., object], args: tuple[Any, ...], *rest: Any) -> int:
        def run(*call_args: Any, **kwargs: Any) -> object:
            set_name("conn")
            return function(*call_args, **kwargs)

        return start_new_thread(run, args, *rest)

    _thread.start_new_thread = named_start


def serve(argv: list[str]) -> int:
    """``guestload serve`` with named threads (this module's ``--serve`` mode)."""
    _name_threads()
    from guestload.cli.main import main as guestload_main  # noqa: PLC0415

    return guestload_main(["serve", *argv])


def tasks(pid: int) -> dict[str, tuple[str, int, int]]:
    """Each live thread of ``pid``: (name, CPU nanoseconds, times put on a CPU)."""
    found: dict[str, tuple[str, int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            run_ns, _waited, slices = (int(v) for v in (task / "schedstat").read_text().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue  # the thread ended meanwhile
        found[task.name] = (name, run_ns, slices)
    return found


def run_once(
    *,
    source_args: list[str],
    vms: int,
    seconds: float,
    scraped: bool,
    workdir: Path,
    registry: ProcessRegistry,
) -> dict[str, Any]:
    """One served process over one window: CPU per poll in all, and by thread name."""
    port = free_port()
    process = registry.spawn(
        [
            sys.executable,
            "-m",
            "bench.threads",
            "--serve",
            *source_args,
            "--collector.interval",
            "1s",
            "--collector.agent-timeout",
            "500ms",
            "--node",
            "bench-node",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--log.level",
            "warn",
        ],
        log_path=workdir / "guestload.log",
    )
    try:

        def polls() -> float:
            text = scrape("127.0.0.1", port, "/metrics", gzip=False).body.decode()
            return sum(metric_values(text, "guestload_polls_total"))

        # Past the first polls' connecting and imports.
        wait_for_polls(process, polls, count=3, timeout=60, log_path=workdir / "guestload.log")
        polls_before = polls()
        threads_before = tasks(process.pid)
        cpu_before = process_cpu_seconds(process.pid)
        started = time.monotonic()
        scrapes = 0
        while scraped and time.monotonic() - started < seconds:
            scrape("127.0.0.1", port, "/metrics", gzip=True)
            scrapes += 1
            time.sleep(max(0.0, started + scrapes - time.monotonic()))
        time.sleep(max(0.0, started + seconds - time.monotonic()))
        cpu = process_cpu_seconds(process.pid) - cpu_before
        threads_after = tasks(process.pid)
        count = polls() - polls_before
    finally:
        registry.stop(process)
    by_name: dict[str, list[float]] = {}
    live = 0.0
    for tid, (name, run_ns, slices) in threads_after.items():
        _name, run_before, slices_before = threads_before.get(tid, (name, 0, 0))
        spent = (run_ns - run_before) / 1e9
        live += spent
        totals = by_name.setdefault(name, [0.0, 0.0])
        totals[0] += spent
        totals[1] += slices - slices_before
    by_name[ENDED] = [max(0.0, cpu - live), 0.0]
    return {
        "polls": count,
        "scrapes": scrapes,
        "cpu_seconds": cpu,
        "cpu_ms_per_poll": 1000 * cpu / count,
        "cpu_ms_per_vm_poll": 1000 * cpu / count / vms,
        "threads": {
            name: {"cpu_ms_per_poll": 1000 * spent / count, "on_cpu_per_poll": slices / count}
            for name, (spent, slices) in sorted(by_name.items())
        },
    }


@contextmanager
def source(kind: str, vms: int, workdir: Path) -> Iterator[list[str]]:
    """The ``guestload serve`` flags of the source ``kind`` (a private daemon for libvirt's)."""
    if kind == "simulated":
        yield ["--source", "simulated", "--simulated.vms", str(vms)]
        return
    if kind == "lab-vms":
        from bench.poll import lab_vms  # noqa: PLC0415 - boots real VMs

        with lab_vms(vms, workdir) as (uri, _empty_uri):
            yield ["--libvirt.uri", uri]
        return
    from guestload_lab.libvirtd import TestDriverLibvirtd  # noqa: PLC0415

    domains = "".join(
        f"<domain type='test'><name>bench-{i}</name><memory>131072</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
        for i in range(vms)
    )
    node = workdir / "node.xml"
    node.write_text(f"<node>{domains}</node>\n")
    daemon = TestDriverLibvirtd(directory=workdir / "libvirtd")
    daemon.start()
    try:
        yield [
            "--libvirt.uri",
            f"test+unix://{node}?socket={daemon.socket_path}",
            "--collector.agent-backoff-max",
            "1s",
        ]
    finally:
        daemon.stop()


def summary_table(runs: list[dict[str, Any]]) -> str:
    """Medians over the rounds: the whole process, then each thread name."""
    names = sorted({name for run in runs for name in run["threads"]})
    rows: list[list[object]] = [
        [
            "all (process CPU clock)",
            f"{statistics.median(r['cpu_ms_per_poll'] for r in runs):.3f}",
            "-",
        ]
    ]
    for name in names:
        threads = [_thread(run, name) for run in runs]
        rows.append(
            [
                name,
                f"{statistics.median(t['cpu_ms_per_poll'] for t in threads):.3f}",
                f"{statistics.median(t['on_cpu_per_poll'] for t in threads):.1f}",
            ]
        )
    return format_table(["thread", "CPU ms per poll (median)", "times on a CPU per poll"], rows)


def _thread(run: dict[str, Any], name: str) -> dict[str, float]:
    threads: dict[str, dict[str, float]] = run["threads"]
    return threads.get(name, {"cpu_ms_per_poll": 0.0, "on_cpu_per_poll": 0.0})


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--serve"]:
        return serve(arguments[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__)
    parser.add_argument(
        "--source", choices=("simulated", "test-driver", "lab-vms"), default="simulated"
    )
    parser.add_argument("--vms", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unscraped", action="store_true", help="nothing scrapes the exporter")
    parser.add_argument("--serve-args", default="", help="more flags for guestload serve")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "threads.json")
    args = parser.parse_args(arguments)
    exit_on_sigterm()
    runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="guestload-bench-threads-") as workdir_name,
        ProcessRegistry() as registry,
    ):
        workdir = Path(workdir_name)
        with source(args.source, args.vms, workdir) as source_args:
            for _ in range(args.rounds):
                runs.append(
                    run_once(
                        source_args=[*source_args, *shlex.split(args.serve_args)],
                        vms=args.vms,
                        seconds=args.seconds,
                        scraped=not args.unscraped,
                        workdir=workdir,
                        registry=registry,
                    )
                )
    table = summary_table(runs)
    result = {
        "source": args.source,
        "vms": args.vms,
        "scraped": not args.unscraped,
        "serve_args": args.serve_args,
        "runs": runs,
    }
    write_results(args.out, {"benchmark": "threads", "result": result})
    print(table)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
