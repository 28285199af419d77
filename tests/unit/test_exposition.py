"""Rendering: exact golden exposition, both formats, gzip.

``tests/security/test_exposition_promtool.py`` passes the same exposition through promtool.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest
from prometheus_client import ProcessCollector
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from guestload import __version__
from guestload.exposition import cache as cache_module
from guestload.exposition.cache import MetricsCache
from guestload.exposition.schema import MetricSet
from guestload.model import Snapshot
from guestload.queries.load import LoadOptions
from guestload.settings import Settings
from tests.exposition import scraped
from tests.unit.fakes import LOAD_ONLY
from tests.unit.snapshots import HOST_STATS, QUERIES, rendered, sample_snapshot

GOLDEN = Path(__file__).parent / "golden" / "metrics.prom"


def test_exposition_matches_the_golden_file(request: pytest.FixtureRequest) -> None:
    body = rendered().decode().replace(f'version="{__version__}"', 'version="VERSION"')
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(body)
    assert body == GOLDEN.read_text(), "run pytest --update-golden after an intended change"


def test_load_series_exist_only_for_vms_whose_agent_answered() -> None:
    families = {f.name: f for f in text_string_to_metric_families(rendered().decode())}
    load = families["kubevirt_vmi_guest_load_1m"]
    assert [(s.labels, s.value) for s in load.samples] == [
        ({"namespace": "prod", "name": "web-1", "node": "node-1"}, 2.5)
    ]
    states = {
        (s.labels["name"], s.labels["query"]): s.labels["state"]
        for s in families["guestload_agent_state"].samples
    }
    assert states == {
        ("web-1", "load"): "ok",
        ("web-1", "cpustats"): "ok",
        ("web-1", "osinfo"): "ok",
        ('odd "name"\\with\nnewline', "load"): "unsupported",
        ('odd "name"\\with\nnewline', "cpustats"): "not_connected",
        ('odd "name"\\with\nnewline', "osinfo"): "ok",
    }


def test_vcpu_series_can_be_turned_off() -> None:
    text = rendered(vcpu=False).decode()
    assert "kubevirt_vmi_vcpu" not in text
    assert "kubevirt_vmi_guest_load_1m{" in text


def test_without_load_and_vcpu_collectors_no_kubevirt_series_remain() -> None:
    """Beside virt-handler (KubeVirt >= 1.6.4) guestload exports guest CPU times only."""
    options = Settings(node="node-1").query_options.replaced(LoadOptions(enabled=False))
    settings = Settings(node="node-1", query_options=options, vcpu_collector=False)
    cache = MetricsCache(
        metric_set=MetricSet(queries=settings.queries(), vcpu_collector=settings.vcpu_collector)
    )
    cache.update(sample_snapshot())
    families = {f.name: f for f in text_string_to_metric_families(scraped(cache).decode())}
    assert not [name for name in families if name.startswith("kubevirt_")]
    assert families["guestload_guest_cpu_seconds"].samples
    queries = {s.labels["query"] for s in families["guestload_agent_state"].samples}
    assert queries == {"cpustats", "osinfo"}
    assert families["guestload_guest_os_info"].samples


def test_openmetrics_has_the_same_samples_and_ends_with_eof() -> None:
    text = rendered(openmetrics=True).decode()
    assert text.endswith("# EOF\n")
    assert text.count("# EOF") == 1
    om = {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for f in parse_openmetrics(text)  # type: ignore[no-untyped-call]
        for s in f.samples
    }
    plain = {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for f in text_string_to_metric_families(rendered().decode())
        for s in f.samples
    }
    assert om == plain


@pytest.mark.parametrize("openmetrics", [False, True])
def test_gzip_body_is_one_valid_stream_with_the_live_tail(openmetrics: bool) -> None:
    live = ProcessCollector(registry=CollectorRegistry())
    cache = MetricsCache(
        metric_set=MetricSet(queries=QUERIES, vcpu_collector=True, host_stats=HOST_STATS),
        live_collectors=(live,),
    )
    cache.update(sample_snapshot())
    plain = scraped(cache, openmetrics=openmetrics)
    packed = scraped(cache, openmetrics=openmetrics, gzip=True)
    unpacked = gzip.decompress(packed)
    snapshot_part = rendered(openmetrics=openmetrics)
    if openmetrics:
        snapshot_part = snapshot_part.removesuffix(b"# EOF\n")
    assert unpacked.startswith(snapshot_part)
    assert b"process_resident_memory_bytes" in unpacked
    assert plain.startswith(snapshot_part)
    # One gzip member (not a second one appended), its CRC and length those of the whole.
    stream = zlib.decompressobj(wbits=31)
    assert stream.decompress(packed) == unpacked
    assert stream.eof
    assert stream.unused_data == b""


@pytest.mark.parametrize(
    "tail",
    [b"", b"x\n", bytes(range(256)) * 64, bytes(range(256)) * 256, b"y" * 0x1FFFE],
    ids=["empty", "one-line", "16k", "two-blocks", "exactly-two-full-blocks"],
)
def test_a_gzip_tail_finishes_the_body_s_stream(tail: bytes) -> None:
    body = b"".join(b"series_%d 1.0\n" % i for i in range(5000))
    gzipped = cache_module._gzip(body)
    stream = zlib.decompressobj(wbits=31)
    assert stream.decompress(gzipped.prefix + gzipped.finish(tail)) == body + tail
    assert stream.eof
    assert stream.unused_data == b""


def test_before_the_first_poll_libvirt_is_reported_down() -> None:
    body = scraped(MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True)))
    assert b"guestload_libvirt_up 0.0" in body
    assert b"kubevirt_vmi_guest_load_1m{" not in body


def test_a_new_snapshot_replaces_the_old_one_entirely() -> None:
    cache = MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True))
    cache.update(sample_snapshot())
    scraped(cache, openmetrics=True)  # fill the lazy OpenMetrics cache
    cache.update(Snapshot(source_up=True))
    for openmetrics in (False, True):
        body = scraped(cache, openmetrics=openmetrics)
        assert b"web-1" not in body


def test_render_duration_is_reported_live_once_a_snapshot_was_rendered() -> None:
    cache = MetricsCache(
        metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True), report_render_duration=True
    )
    assert b"guestload_render_duration_seconds" not in scraped(cache)
    cache.update(sample_snapshot())
    families = {f.name: f for f in text_string_to_metric_families(scraped(cache).decode())}
    (sample,) = families["guestload_render_duration_seconds"].samples
    assert sample.value == cache.last_render_seconds
    assert 0 < sample.value < 5
