"""The metrics cache renders each snapshot in the formats scrapers ask for, once per poll.

What is rendered when is seen by recording each call of the writer's
:meth:`~guestload.exposition.writer.RenderedSnapshot.body`: a format rendered with the poll
costs its scrape no rendering.
"""

from __future__ import annotations

import gzip

import pytest

from guestload.exposition import cache as cache_module
from guestload.exposition.cache import MetricsCache
from guestload.exposition.schema import MetricSet
from guestload.exposition.writer import RenderedSnapshot
from guestload.model import Snapshot
from tests.exposition import scraped
from tests.unit.fakes import LOAD_ONLY


@pytest.fixture
def rendered_formats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The formats rendered since the last clear, in order (``text``, ``openmetrics``)."""
    calls: list[str] = []
    body = RenderedSnapshot.body

    def recording(self: RenderedSnapshot, *, openmetrics_format: bool) -> bytes:
        calls.append("openmetrics" if openmetrics_format else "text")
        return body(self, openmetrics_format=openmetrics_format)

    monkeypatch.setattr(RenderedSnapshot, "body", recording)
    return calls


def _cache() -> MetricsCache:
    return MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True))


def test_text_is_rendered_until_a_scraper_asks_for_something_else(
    rendered_formats: list[str],
) -> None:
    cache = _cache()
    cache.update(Snapshot(source_up=True, polls_total=1))
    assert rendered_formats == ["text"]
    scraped(cache)
    assert rendered_formats == ["text"]  # served from the poll's rendering


def test_a_prometheus_scraping_openmetrics_gets_it_rendered_with_the_poll(
    rendered_formats: list[str],
) -> None:
    cache = _cache()
    cache.update(Snapshot(source_up=True, polls_total=1))
    scraped(cache, openmetrics=True, gzip=True)
    assert rendered_formats == ["text", "openmetrics"]  # asked for: rendered on request
    rendered_formats.clear()
    cache.update(Snapshot(source_up=True, polls_total=2))
    assert rendered_formats == ["openmetrics"]
    cache.update(Snapshot(source_up=True, polls_total=3))  # no scrape in between: unchanged
    assert rendered_formats == ["openmetrics", "openmetrics"]
    body = scraped(cache, openmetrics=True)
    assert rendered_formats == ["openmetrics", "openmetrics"]
    assert b"guestload_polls_total 3.0" in body
    assert body.endswith(b"# EOF\n")


def test_both_formats_are_rendered_when_both_are_scraped(rendered_formats: list[str]) -> None:
    cache = _cache()
    cache.update(Snapshot(source_up=True, polls_total=1))
    scraped(cache, openmetrics=True)
    scraped(cache)
    rendered_formats.clear()
    cache.update(Snapshot(source_up=True, polls_total=2))
    assert sorted(rendered_formats) == ["openmetrics", "text"]
    assert b"guestload_polls_total 2.0" in scraped(cache)
    assert sorted(rendered_formats) == ["openmetrics", "text"]


@pytest.fixture
def compressed(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The bodies compressed since the last clear, in order."""
    calls: list[bytes] = []
    compress = cache_module._gzip

    def recording(body: bytes) -> cache_module._Gzipped:
        calls.append(body)
        return compress(body)

    monkeypatch.setattr(cache_module, "_gzip", recording)
    return calls


def test_a_body_is_compressed_with_the_poll_only_when_scrapers_ask_for_gzip(
    compressed: list[bytes],
) -> None:
    cache = _cache()
    cache.update(Snapshot(source_up=True, polls_total=1))
    plain = scraped(cache)
    assert compressed == []  # nobody asked for gzip: no poll compresses
    cache.update(Snapshot(source_up=True, polls_total=2))
    assert compressed == []
    assert gzip.decompress(scraped(cache, gzip=True)).startswith(scraped(cache)[:200])
    assert len(compressed) == 1  # on the request path, once for the snapshot
    scraped(cache, gzip=True)
    assert len(compressed) == 1
    cache.update(Snapshot(source_up=True, polls_total=3))
    assert len(compressed) == 2  # asked for lately: compressed with the poll
    assert b"guestload_polls_total 3.0" in gzip.decompress(scraped(cache, gzip=True))
    assert len(compressed) == 2
    assert b"guestload_polls_total 1.0" in plain
