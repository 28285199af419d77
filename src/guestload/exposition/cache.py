"""Exposition rendered once per snapshot and served as cached bytes.

A snapshot's exposition (135k samples at 10k VMs) is written by
:class:`~guestload.exposition.writer.SnapshotWriter` when the snapshot is published, not per
scrape.
Process metrics (memory, CPU, file descriptors) must be live, so prometheus_client renders
them per scrape (a few dozen samples) and they are appended; for gzip the cached body's
compressor state is kept so the live tail continues one valid gzip stream.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import exposition
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector, CollectorRegistry

from guestload.exposition.schema import RENDER_DURATION, MetricSet
from guestload.exposition.writer import RenderedSnapshot, SnapshotWriter
from guestload.model import Snapshot

#: The classic text format (0.0.4) the writer writes; every Prometheus version parses it.
#: Spelled out: prometheus_client's ``CONTENT_TYPE_LATEST`` moved on to 1.0.0 in later releases.
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = openmetrics.CONTENT_TYPE_LATEST
OPENMETRICS_EOF = b"# EOF\n"
#: zlib level for cached bodies: level 1 is ~5x faster than 9 for a few % more bytes.
GZIP_LEVEL = 1
_GZIP_WBITS = 31  # zlib's gzip container


@dataclass(frozen=True, slots=True)
class _Encoded:
    body: bytes
    gzip_prefix: bytes
    gzip_state: zlib._Compress


def _encode(body: bytes) -> _Encoded:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    prefix = compressor.compress(body) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return _Encoded(body=body, gzip_prefix=prefix, gzip_state=compressor)


def _encode_rendered(rendered: RenderedSnapshot, *, openmetrics_format: bool) -> _Encoded:
    return _encode(rendered.body(openmetrics_format=openmetrics_format))


def _render(registry: CollectorRegistry, *, openmetrics_format: bool) -> bytes:
    if openmetrics_format:
        body: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
        return body.removesuffix(OPENMETRICS_EOF)
    return exposition.generate_latest(registry)


class MetricsCache:
    """The latest snapshot's exposition in both formats, plain and gzip."""

    def __init__(
        self,
        *,
        metric_set: MetricSet,
        live_collectors: tuple[Collector, ...] = (),
        report_render_duration: bool = False,
    ) -> None:
        self._writer = SnapshotWriter(metric_set=metric_set)
        self._render_seconds: float | None = None
        self._live = CollectorRegistry(auto_describe=False)
        for collector in live_collectors:
            self._live.register(collector)
        if report_render_duration:
            self._live.register(_RenderDurationCollector(self))
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._encoded: dict[bool, _Encoded] = {}
        self._asked: set[bool] = set()
        """Formats scraped since the last update (True: OpenMetrics)."""
        self._eager: frozenset[bool] = frozenset({False})
        """Formats rendered as soon as a snapshot arrives: those scrapers asked for lately."""

    def update(self, snapshot: Snapshot) -> None:
        """Publish ``snapshot``, rendered now in the formats scraped since the last one.

        Prometheus asks for OpenMetrics, other scrapers for text: rendering only what was
        asked for keeps a poll to one rendering, and the first scrape after a poll from
        rendering on the request path. A format nobody asked for lately is rendered on its
        first request. Until the first scrape, the text format is rendered.
        """
        with self._lock:
            if self._asked:
                self._eager, self._asked = frozenset(self._asked), set()
            eager = self._eager
        started = time.perf_counter()
        rendered = self._writer.render(snapshot)
        encoded = {fmt: _encode_rendered(rendered, openmetrics_format=fmt) for fmt in sorted(eager)}
        took = time.perf_counter() - started
        with self._lock:
            self._snapshot = snapshot
            self._encoded = encoded
            self._render_seconds = took

    @property
    def serves_successful_poll(self) -> bool:
        """True while scrapes get a successful poll's snapshot, the hypervisor connection up.

        Set once :meth:`update` has handed the snapshot over, so every format a scrape can ask
        for (rendered now or on its first request) carries that poll's data.
        """
        with self._lock:
            snapshot = self._snapshot
        return (
            snapshot is not None
            and snapshot.source_up
            and snapshot.last_success_timestamp_seconds is not None
        )

    @property
    def last_render_seconds(self) -> float | None:
        """Wall time the last :meth:`update` spent rendering and compressing."""
        return self._render_seconds

    def render_parts(self, *, openmetrics_format: bool, gzip: bool) -> tuple[bytes, ...]:
        """The body for one scrape, in pieces: the cached snapshot exposition (shared, so a
        scrape copies no megabytes), then the live process metrics."""
        with self._lock:
            self._asked.add(openmetrics_format)
            snapshot = self._snapshot
            encoded = self._encoded.get(openmetrics_format)
        if snapshot is None:
            snapshot = Snapshot(source_up=False)
        if encoded is None:
            encoded = _encode_rendered(
                self._writer.render(snapshot), openmetrics_format=openmetrics_format
            )
            with self._lock:
                if self._snapshot is snapshot:
                    self._encoded[openmetrics_format] = encoded
        tail = _render(self._live, openmetrics_format=openmetrics_format)
        if openmetrics_format:
            tail += OPENMETRICS_EOF
        if not gzip:
            return encoded.body, tail
        compressor = encoded.gzip_state.copy()
        return encoded.gzip_prefix, compressor.compress(tail) + compressor.flush()


class _RenderDurationCollector(Collector):
    """The cache's own cost, live: poll duration does not include rendering."""

    def __init__(self, cache: MetricsCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        seconds = self._cache.last_render_seconds
        if seconds is not None:
            yield GaugeMetricFamily(RENDER_DURATION.name, RENDER_DURATION.help, value=seconds)
