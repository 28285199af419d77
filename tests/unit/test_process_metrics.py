"""The process's own families: byte for byte what prometheus_client's collectors write."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
from prometheus_client import PlatformCollector, ProcessCollector, exposition
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import CollectorRegistry

from guestload.exposition.cache import MetricsCache
from guestload.exposition.process import ProcessMetrics, parse_stat
from guestload.exposition.schema import MetricSet
from tests.exposition import scraped
from tests.unit.fakes import LOAD_ONLY
from tests.unit.snapshots import sample_snapshot

PID = "4242"
#: A command name with a space and a parenthesis, then real fields (utime 1200, stime 500,
#: starttime 98765, vsize 123456789, rss 4321 pages).
STAT = (
    b"4242 (odd) name) S 1 4242 4242 0 -1 4194560 5000 0 0 0 1200 500 0 0 20 0 9 0 98765 "
    b"123456789 4321 18446744073709551615 1 1 0 0 0 0 0 16781312 17642 0 0 0 17 1 0 0 0 0 0\n"
)


def _fake_proc(root: Path, *, open_fds: int = 3) -> Path:
    (root / "stat").write_bytes(b"cpu  1 2 3 4\nbtime 1765000000\nprocesses 10\n")
    process = root / PID
    (process / "fd").mkdir(parents=True)
    for fd in range(open_fds):
        (process / "fd" / str(fd)).write_text("")
    (process / "stat").write_bytes(STAT)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # what the exporter reports
    (process / "limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units     \n"
        f"Max open files            {soft}                {soft}                files     \n"
    )
    return root


def _client_python(proc: Path, *, openmetrics_format: bool) -> str:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(proc=str(proc), pid=lambda: PID, registry=registry)
    PlatformCollector(registry=registry)
    if openmetrics_format:
        body: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
        return body.decode().removesuffix("# EOF\n")
    return exposition.generate_latest(registry).decode()


@pytest.mark.parametrize("openmetrics_format", [False, True])
def test_the_families_are_those_client_python_writes(
    tmp_path: Path, openmetrics_format: bool
) -> None:
    proc = _fake_proc(tmp_path)
    ours = ProcessMetrics(proc=proc, pid=PID).text(openmetrics_format=openmetrics_format)
    assert ours == _client_python(proc, openmetrics_format=openmetrics_format)
    assert "process_cpu_seconds_total 17.0\n" in ours  # (1200 + 500) ticks at 100 Hz
    assert "process_open_fds 3.0\n" in ours


def test_values_are_read_afresh_on_every_scrape(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path)
    metrics = ProcessMetrics(proc=proc, pid=PID)
    metrics.text(openmetrics_format=False)
    (proc / PID / "fd" / "9").write_text("")
    (proc / PID / "stat").write_bytes(STAT.replace(b" 1200 500 ", b" 2200 500 "))
    text = metrics.text(openmetrics_format=False)
    assert "process_open_fds 4.0\n" in text
    assert "process_cpu_seconds_total 27.0\n" in text


def test_without_procfs_only_python_info_is_written(tmp_path: Path) -> None:
    text = ProcessMetrics(proc=tmp_path, pid=PID).text(openmetrics_format=False)
    assert "process_" not in text
    assert text == _client_python(tmp_path, openmetrics_format=False)


def test_a_vanished_process_file_leaves_out_only_its_families(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path)
    (proc / PID / "stat").unlink()
    text = ProcessMetrics(proc=proc, pid=PID).text(openmetrics_format=False)
    assert "process_resident_memory_bytes" not in text
    assert "process_open_fds 3.0\n" in text
    assert "python_info{" in text


def test_parse_stat_takes_the_fields_after_the_last_parenthesis() -> None:
    stat = parse_stat(STAT)
    assert (stat.user_ticks, stat.system_ticks, stat.start_ticks) == (1200, 500, 98765)
    assert (stat.virtual_bytes, stat.resident_pages) == (123456789, 4321)


@pytest.mark.parametrize("openmetrics_format", [False, True])
def test_the_cache_appends_them_then_the_render_duration(
    tmp_path: Path, openmetrics_format: bool
) -> None:
    proc = _fake_proc(tmp_path)
    cache = MetricsCache(
        metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True),
        process_metrics=ProcessMetrics(proc=proc, pid=PID),
        report_render_duration=True,
    )
    cache.update(sample_snapshot())
    body = scraped(cache, openmetrics=openmetrics_format).decode()
    process = _client_python(proc, openmetrics_format=openmetrics_format)
    head, found, tail = body.partition(process)
    assert found
    assert "process_" not in head
    assert tail.startswith("# HELP guestload_render_duration_seconds ")
    assert tail.endswith("# EOF\n" if openmetrics_format else "\n")
