"""What every benchmark shares: process accounting, statistics, tables, JSON and child exporters."""

from __future__ import annotations

import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from guestload.settings import parse_duration
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import free_port

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KIB = 1024
_CPUCLOCK_SCHED = 2
"""Linux's process-wide CPU clock of another process: ``((~pid) << 3) | 2``."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so every process a benchmark started is stopped."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def threads_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``'s live threads so far, to the nanosecond (``/proc/*/schedstat``).

    ``cpu_seconds`` counts in clock ticks (10 ms): too coarse for a window of a few hundred
    milliseconds of CPU. Threads that ended are not counted, so measure windows in which the
    process keeps its threads.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


def process_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` so far, every thread it ever ran included, to the nanosecond.

    Read from the process's CPU clock (``clock_getcpuclockid``), which unlike
    ``threads_cpu_seconds`` keeps the time of threads that ended: a server with a thread per
    connection spends its scrapes in threads gone by the end of a window.
    """
    return time.clock_gettime(((~pid) << 3) | _CPUCLOCK_SCHED)


def memory_bytes(pid: int) -> dict[str, int]:
    """Resident set size now (``rss``) and at its peak (``hwm``), in bytes."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values["rss" if key == "VmRSS" else "hwm"] = int(rest.split()[0]) * _PAGE_KIB
    return values


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` quantile (0 to 1) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(values),
        "p90": percentile(values, 0.9),
        "min": min(values),
        "max": max(values),
        "n": float(len(values)),
    }


def milliseconds(seconds: float | None) -> str:
    """Seconds as milliseconds to three places, ``-`` where there is no figure."""
    return "-" if seconds is None else f"{seconds * 1000:.3f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_results(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` with the machine's facts as JSON to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
            "python": platform.python_version(),
            "argv": sys.argv,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        **data,
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


@dataclass(frozen=True, slots=True)
class Scrape:
    seconds: float
    body_bytes: int
    body: bytes


def scrape(host: str, port: int, path: str, *, gzip: bool, timeout: float = 60.0) -> Scrape:
    """GET ``path`` on a fresh connection; the time until the last body byte arrived."""
    headers = {"Accept": "text/plain;version=0.0.4"}
    if gzip:
        headers["Accept-Encoding"] = "gzip"
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        started = time.perf_counter()
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        seconds = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"GET {host}:{port}{path}: {response.status}")
        if gzip and response.getheader("Content-Encoding") != "gzip":
            raise RuntimeError(f"GET {host}:{port}{path}: asked for gzip, got plain")
    finally:
        connection.close()
    return Scrape(seconds=seconds, body_bytes=len(body), body=body)


def metric_values(text: str, name: str) -> list[float]:
    """Every sample value named ``name`` in an exposition."""
    return [
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


class SimulatedExporter:
    """``guestload serve --source simulated`` as a child process on a loopback port."""

    def __init__(
        self,
        *,
        registry: ProcessRegistry,
        workdir: Path,
        vms: int,
        interval: str,
        node: str = "bench-node",
        seed: int = 1,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.vms = vms
        self.port = free_port()
        self.workdir = workdir
        self._registry = registry
        self._process: subprocess.Popen[bytes] | None = None
        self.argv = [
            sys.executable,
            "-m",
            "guestload",
            "serve",
            "--source",
            "simulated",
            "--simulated.vms",
            str(vms),
            "--simulated.seed",
            str(seed),
            "--collector.interval",
            interval,
            "--collector.agent-timeout",
            f"{min(5.0, parse_duration(interval) / 2):g}s",
            "--node",
            node,
            "--web.listen-address",
            f"127.0.0.1:{self.port}",
            "--log.level",
            "warn",
            *extra_args,
        ]

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("exporter not started")
        return self._process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(
        self, *, timeout: float = 180.0, scrape_text: Callable[[], str] | None = None
    ) -> None:
        """Start it and wait until its first poll with every VM is published.

        ``scrape_text`` reads the exposition when plain unauthenticated HTTP cannot (TLS).
        """
        self._process = self._registry.spawn(self.argv, log_path=self.workdir / "guestload.log")
        read = scrape_text or self.scrape_text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = (self.workdir / "guestload.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"guestload exited: {log}")
            try:
                text = read()
            except OSError:
                time.sleep(0.2)
                continue
            if metric_values(text, "guestload_domains") == [float(self.vms)]:
                return
            time.sleep(0.2)
        raise TimeoutError(f"guestload did not publish {self.vms} VMs in {timeout:.0f} s")

    def scrape_text(self) -> str:
        return scrape("127.0.0.1", self.port, "/metrics", gzip=False).body.decode()

    def stop(self) -> None:
        if self._process is not None:
            self._registry.stop(self._process)
            self._process = None


def wait_for_polls(
    process: subprocess.Popen[bytes],
    polls: Callable[[], float],
    *,
    count: int,
    timeout: float,
    log_path: Path,
) -> None:
    """Wait until the served guestload *process* has polled *count* times by *polls* (its
    scraped ``guestload_polls_total``); its log in the error when it exits, TimeoutError after
    *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(log_path.read_text(errors="replace"))
        try:
            if polls() >= count:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"guestload did not poll {count} times in {timeout:g} s")
        time.sleep(0.2)
