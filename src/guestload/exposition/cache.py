"""Exposition rendered once per snapshot and served as cached bytes.

A snapshot's exposition (135k samples at 10k VMs) is written by
:class:`~guestload.exposition.writer.SnapshotWriter` when the snapshot is published, not per
scrape.
Process metrics (memory, CPU, file descriptors) must be live, so they are written per scrape
(:mod:`guestload.exposition.process`, a dozen lines) and appended, with the render duration
and any other live collectors (rendered by prometheus_client); for gzip the cached body
ends in a sync flush, and the live tail follows it in stored (uncompressed) deflate blocks,
with the gzip trailer (CRC-32 and length of the whole) written by hand: one valid gzip
stream, without copying the body's compressor (a quarter of a megabyte of state) or making
one on every scrape. Like the formats, a
body is compressed with the poll only when scrapers asked for it gzipped lately, and on its
first gzip request otherwise.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from dataclasses import dataclass

from prometheus_client import exposition
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector, CollectorRegistry

from guestload.exposition.process import ProcessMetrics
from guestload.exposition.schema import RENDER_DURATION, MetricSet
from guestload.exposition.writer import SnapshotWriter, format_value, header_lines
from guestload.model import Snapshot

#: The classic text format (0.0.4) the writer writes; every Prometheus version parses it.
#: Spelled out: prometheus_client's ``CONTENT_TYPE_LATEST`` moved on to 1.0.0 in later releases.
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = openmetrics.CONTENT_TYPE_LATEST
OPENMETRICS_EOF = b"# EOF\n"
#: zlib level for cached bodies: level 1 is ~5x faster than 9 for a few % more bytes.
GZIP_LEVEL = 1
_GZIP_WBITS = 31  # zlib's gzip container
_STORED_BLOCK_MAX = 0xFFFF
"""The most bytes one stored (uncompressed) deflate block holds."""


@dataclass(frozen=True, slots=True)
class _Gzipped:
    """A body's gzip stream up to a sync point: header and deflate blocks, no final block."""

    prefix: bytes
    crc: int
    """CRC-32 of the body."""
    size: int
    """The body's length."""

    def finish(self, tail: bytes) -> bytes:
        """What follows :attr:`prefix` to make one gzip stream of the body then ``tail``.

        The tail goes in stored deflate blocks, the last one final: the prefix ends byte
        aligned (a sync flush), so each block is a header byte, its length and that length's
        complement, then the bytes as they are. A compressor would save a kilobyte of a few
        hundred kilobytes at most, at the cost of making one every scrape.
        """
        parts: list[bytes] = []
        start = 0
        while True:
            chunk = tail[start : start + _STORED_BLOCK_MAX]
            start += len(chunk)
            final = start >= len(tail)
            parts.append(struct.pack("<BHH", final, len(chunk), len(chunk) ^ 0xFFFF))
            parts.append(chunk)
            if final:
                break
        parts.append(
            struct.pack("<II", zlib.crc32(tail, self.crc), (self.size + len(tail)) & _ISIZE_MASK)
        )
        return b"".join(parts)


_ISIZE_MASK = 0xFFFFFFFF  # gzip's ISIZE: the length modulo 2**32


def _gzip(body: bytes) -> _Gzipped:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    prefix = compressor.compress(body) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return _Gzipped(prefix=prefix, crc=zlib.crc32(body), size=len(body))


_Variant = tuple[bool, bool]
"""A way the exposition is asked for: (OpenMetrics, gzip)."""


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
        process_metrics: ProcessMetrics | None = None,
        live_collectors: tuple[Collector, ...] = (),
        report_render_duration: bool = False,
    ) -> None:
        self._writer = SnapshotWriter(metric_set=metric_set)
        self._render_seconds: float | None = None
        self._process = process_metrics
        self._live: CollectorRegistry | None = None
        if live_collectors:
            self._live = CollectorRegistry(auto_describe=False)
            for collector in live_collectors:
                self._live.register(collector)
        self._render_headers = header_lines(RENDER_DURATION) if report_render_duration else None
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._bodies: dict[bool, bytes] = {}
        """The snapshot's body per format (True: OpenMetrics)."""
        self._gzipped: dict[bool, _Gzipped] = {}
        """The snapshot's compressed body per format."""
        self._asked: set[_Variant] = set()
        """Variants scraped since the last update."""
        self._eager: frozenset[_Variant] = frozenset({(False, False)})
        """Variants made as soon as a snapshot arrives: those scrapers asked for lately."""

    def update(self, snapshot: Snapshot) -> None:
        """Publish ``snapshot``, rendered now in the variants scraped since the last one.

        Prometheus asks for OpenMetrics with gzip, other scrapers for text, with or without
        gzip: making only what was asked for keeps a poll to one rendering (and one
        compression, or none), and the first scrape after a poll from rendering on the request
        path. A format or compression nobody asked for lately is made on its first request.
        Until the first scrape, the plain text format is rendered.
        """
        with self._lock:
            if self._asked:
                self._eager, self._asked = frozenset(self._asked), set()
            eager = self._eager
        started = time.perf_counter()
        rendered = self._writer.render(snapshot)
        bodies = {
            fmt: rendered.body(openmetrics_format=fmt) for fmt in sorted({f for f, _ in eager})
        }
        gzipped = {fmt: _gzip(bodies[fmt]) for fmt, gzip in sorted(eager) if gzip}
        took = time.perf_counter() - started
        with self._lock:
            self._snapshot = snapshot
            self._bodies = bodies
            self._gzipped = gzipped
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
        fmt = openmetrics_format
        with self._lock:
            self._asked.add((fmt, gzip))
            snapshot = self._snapshot
            body = self._bodies.get(fmt)
            gzipped = self._gzipped.get(fmt) if gzip else None
        if snapshot is None:
            snapshot = Snapshot(source_up=False)
        if body is None:
            body = self._writer.render(snapshot).body(openmetrics_format=fmt)
            with self._lock:
                if self._snapshot is snapshot:
                    self._bodies[fmt] = body
        tail = self._live_tail(openmetrics_format=fmt)
        if not gzip:
            return body, tail
        if gzipped is None:
            gzipped = _gzip(body)
            with self._lock:
                if self._snapshot is snapshot:
                    self._gzipped[fmt] = gzipped
        return gzipped.prefix, gzipped.finish(tail)

    def _live_tail(self, *, openmetrics_format: bool) -> bytes:
        """What follows the snapshot's exposition: the process's families, the live
        collectors', the render duration (the cache's own cost: poll duration does not include
        rendering), and for OpenMetrics ``# EOF``."""
        fmt = openmetrics_format
        tail = self._process.text(openmetrics_format=fmt).encode() if self._process else b""
        if self._live is not None:
            tail += _render(self._live, openmetrics_format=fmt)
        seconds = self._render_seconds
        if self._render_headers is not None and seconds is not None:
            line = f"{RENDER_DURATION.name} {format_value(seconds)}\n"
            tail += (self._render_headers[1 if fmt else 0] + line).encode()
        return tail + OPENMETRICS_EOF if fmt else tail
