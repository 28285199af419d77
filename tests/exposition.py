"""Reading a scraped exposition in tests: a cache's body, one series' value, a family's lines."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from guestload.exposition.cache import MetricsCache


def metric_value(body: str, series: str) -> float | None:
    """The value of the exact series line ``series`` (name plus labels) in a text body."""
    for line in body.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return None


def sample_lines(body: str, metric_prefix: str) -> list[str]:
    """The sample lines (not HELP or TYPE) whose metric name starts with ``metric_prefix``."""
    return [line for line in body.splitlines() if line.startswith(metric_prefix)]


def scraped(cache: MetricsCache, *, openmetrics: bool = False, gzip: bool = False) -> bytes:
    """The body a scrape of ``cache`` gets, joined from the pieces the endpoint sends."""
    return b"".join(cache.render_parts(openmetrics_format=openmetrics, gzip=gzip))
