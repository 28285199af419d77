"""The exporter process's own families, written on each scrape without prometheus_client.

The families, HELP and TYPE lines and values are those of prometheus_client's
``ProcessCollector`` and ``PlatformCollector`` (the ``process_*`` names every Prometheus
client library's process collector uses): CPU seconds, virtual and resident memory, start
time, open and maximum file descriptors, then ``python_info``. A scrape costs one read of
``stat``, one listing of ``fd`` and a ``getrlimit`` call; what cannot change while the
process runs (the start time, ``python_info``, the HELP and TYPE lines) is written once.
prometheus_client's collectors build metric families and render them through its validating
writer on every scrape, which in the served process cost about 0.6 ms of a scrape's 1.8
(docs/performance.md).
"""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass
from pathlib import Path

from guestload.exposition.writer import format_value, header_lines
from guestload.metricspec import MetricSpec, MetricType

VIRTUAL_MEMORY = MetricSpec(
    "process_virtual_memory_bytes", MetricType.GAUGE, "Virtual memory size in bytes."
)
RESIDENT_MEMORY = MetricSpec(
    "process_resident_memory_bytes", MetricType.GAUGE, "Resident memory size in bytes."
)
START_TIME = MetricSpec(
    "process_start_time_seconds",
    MetricType.GAUGE,
    "Start time of the process since unix epoch in seconds.",
)
CPU_SECONDS = MetricSpec(
    "process_cpu_seconds", MetricType.COUNTER, "Total user and system CPU time spent in seconds."
)
OPEN_FDS = MetricSpec("process_open_fds", MetricType.GAUGE, "Number of open file descriptors.")
MAX_FDS = MetricSpec(
    "process_max_fds", MetricType.GAUGE, "Maximum number of open file descriptors."
)
PROCESS_FAMILIES = (
    VIRTUAL_MEMORY,
    RESIDENT_MEMORY,
    START_TIME,
    CPU_SECONDS,
    OPEN_FDS,
    MAX_FDS,
)
"""The ``process_*`` families, in the order they are written."""
PYTHON_INFO = MetricSpec(
    "python_info",
    MetricType.GAUGE,
    "Python platform information",
    ("implementation", "major", "minor", "patchlevel", "version"),
)

_PAGE_SIZE = resource.getpagesize()
_NO_LIMIT = {resource.RLIM_INFINITY: float("inf")}
_STAT_MAX_BYTES = 4096
"""More than ``/proc/<pid>/stat`` holds: 52 numbers and a command name of at most 64 bytes."""


@dataclass(frozen=True, slots=True)
class ProcessStat:
    """What a scrape reports from ``/proc/<pid>/stat`` (clock ticks as they are there)."""

    user_ticks: int
    system_ticks: int
    start_ticks: int
    virtual_bytes: int
    resident_pages: int


def parse_stat(data: bytes) -> ProcessStat:
    """``/proc/<pid>/stat``'s fields after the command name (which may hold spaces or ``)``)."""
    fields = data.rpartition(b")")[2].split()
    return ProcessStat(
        user_ticks=int(fields[11]),
        system_ticks=int(fields[12]),
        start_ticks=int(fields[19]),
        virtual_bytes=int(fields[20]),
        resident_pages=int(fields[21]),
    )


def parse_boot_time(data: bytes) -> float | None:
    """The boot time (``btime``, seconds since the epoch) in ``/proc/stat``."""
    for line in data.splitlines():
        if line.startswith(b"btime "):
            return float(line.split()[1])
    return None


def _read(path: str) -> bytes:
    """A small procfs file in one read (no buffered file object: this runs every scrape)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, _STAT_MAX_BYTES)
    finally:
        os.close(fd)


def python_info_lines() -> tuple[str, str]:
    """``python_info`` in the text format and in OpenMetrics (one line, value 1)."""
    major, minor, patchlevel = platform.python_version_tuple()
    labels = {
        "implementation": platform.python_implementation(),
        "major": major,
        "minor": minor,
        "patchlevel": patchlevel,
        "version": platform.python_version(),
    }
    text = ",".join(f'{name}="{value}"' for name, value in sorted(labels.items()))
    line = f"{PYTHON_INFO.name}{{{text}}} 1.0\n"
    text_headers, om_headers = header_lines(PYTHON_INFO)
    return text_headers + line, om_headers + line


class ProcessMetrics:
    """The ``process_*`` families and ``python_info`` of the process at ``proc/pid``.

    ``proc`` and ``pid`` point tests at fixtures, as prometheus_client's ``ProcessCollector``
    does. Without a readable ``<proc>/stat`` (no procfs) there are no ``process_*`` families,
    as with ``ProcessCollector``; a failed read of the process's files leaves out the families
    it feeds.
    """

    def __init__(self, *, proc: Path = Path("/proc"), pid: str = "self") -> None:
        self._stat_path = str(proc / pid / "stat")
        self._fd_path = str(proc / pid / "fd")
        self._ticks = float(os.sysconf("SC_CLK_TCK"))
        try:
            boot_time = parse_boot_time((proc / "stat").read_bytes())
        except OSError:
            boot_time = None
        self._boot_time = boot_time
        self._start_time: float | None = None
        headers = {spec: header_lines(spec) for spec in PROCESS_FAMILIES}
        self._leads = tuple(
            {spec: f"{headers[spec][index]}{spec.sample_name} " for spec in PROCESS_FAMILIES}
            for index in (0, 1)
        )
        """Per format, each family's HELP and TYPE lines and its sample's name."""
        self._python_info = python_info_lines()

    def text(self, *, openmetrics_format: bool) -> str:
        """The families now, in the text format or (without ``# EOF``) OpenMetrics."""
        index = 1 if openmetrics_format else 0
        lead = self._leads[index]
        parts: list[str] = []
        if self._boot_time:
            try:
                stat = parse_stat(_read(self._stat_path))
            except OSError:
                stat = None
            if stat is not None:
                if self._start_time is None:  # fixed for the process's life
                    self._start_time = stat.start_ticks / self._ticks + self._boot_time
                cpu = stat.user_ticks / self._ticks + stat.system_ticks / self._ticks
                parts += (
                    f"{lead[VIRTUAL_MEMORY]}{format_value(float(stat.virtual_bytes))}\n",
                    f"{lead[RESIDENT_MEMORY]}{format_value(stat.resident_pages * _PAGE_SIZE)}\n",
                    f"{lead[START_TIME]}{format_value(self._start_time)}\n",
                    f"{lead[CPU_SECONDS]}{format_value(cpu)}\n",
                )
            try:
                open_fds = len(os.listdir(self._fd_path))
            except OSError:
                open_fds = None
            if open_fds is not None:
                max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                parts += (
                    f"{lead[OPEN_FDS]}{format_value(open_fds)}\n",
                    f"{lead[MAX_FDS]}{format_value(_NO_LIMIT.get(max_fds, max_fds))}\n",
                )
        parts.append(self._python_info[index])
        return "".join(parts)
