"""The metrics cache renders each snapshot in the formats scrapers ask for, once per poll."""

from __future__ import annotations

from guestload.exposition.cache import MetricsCache
from guestload.exposition.schema import MetricSet
from guestload.model import Snapshot
from tests.unit.fakes import LOAD_ONLY


def test_text_is_rendered_until_a_scraper_asks_for_something_else() -> None:
    cache = MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True))
    cache.update(Snapshot(source_up=True, polls_total=1))
    assert cache.prerendered_formats == {"text"}


def test_a_prometheus_scraping_openmetrics_gets_it_rendered_with_the_poll() -> None:
    cache = MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True))
    cache.update(Snapshot(source_up=True, polls_total=1))
    cache.render(openmetrics_format=True, gzip=True)
    cache.update(Snapshot(source_up=True, polls_total=2))
    assert cache.prerendered_formats == {"openmetrics"}
    cache.update(Snapshot(source_up=True, polls_total=3))  # no scrape in between: unchanged
    assert cache.prerendered_formats == {"openmetrics"}
    body = cache.render(openmetrics_format=True, gzip=False)
    assert b"guestload_polls_total 3.0" in body
    assert body.endswith(b"# EOF\n")


def test_both_formats_are_rendered_when_both_are_scraped() -> None:
    cache = MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True))
    cache.update(Snapshot(source_up=True, polls_total=1))
    cache.render(openmetrics_format=True, gzip=False)
    cache.render(openmetrics_format=False, gzip=False)
    cache.update(Snapshot(source_up=True, polls_total=2))
    assert cache.prerendered_formats == {"text", "openmetrics"}
    assert b"guestload_polls_total 2.0" in cache.render(openmetrics_format=False, gzip=False)
