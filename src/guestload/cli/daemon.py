"""``guestload serve``'s lifecycle: source, poller, cache and web server, signals, shutdown."""

from __future__ import annotations

import logging
import os
import platform
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Final

from guestload import __version__
from guestload.exposition.cache import MetricsCache
from guestload.exposition.process import ProcessMetrics
from guestload.exposition.schema import MetricSet
from guestload.identity import IdentityResolver
from guestload.polling.poller import Poller
from guestload.settings import Settings, format_duration
from guestload.sources.catalog import make_source
from guestload.sources.protocol import Source
from guestload.web.reload import PLAIN_HTTP, WebConfigReloader
from guestload.web.server import ExporterServer, WebApp

log = logging.getLogger(__name__)

EXIT_FAILURE: Final = 1


def make_poller(settings: Settings, source: Source, cache: MetricsCache | None) -> Poller:
    """A poller of ``source`` that publishes each snapshot to ``cache`` (if any)."""
    identity = IdentityResolver(
        node=settings.node,
        default_namespace=settings.default_namespace,
        mode=settings.identity_mode,
    )
    return Poller(
        source=source,
        queries=settings.queries(),
        identity=identity,
        poll_interval_seconds=settings.poll_interval_seconds,
        agent_timeout_seconds=settings.agent_timeout_seconds,
        concurrency=settings.concurrency,
        agent_backoff_max_seconds=settings.agent_backoff_max_seconds,
        on_snapshot=cache.update if cache is not None else (lambda _snapshot: None),
        build_info={"python_version": platform.python_version()},
    )


def readiness(poller: Poller, cache: MetricsCache) -> Callable[[], bool]:
    """``/readyz``: the hypervisor connected, and ``/metrics`` serving a successful poll's data.

    The poller counts as ready when its poll ends, before the cache has rendered the snapshot
    (which takes a while at thousands of VMs): readiness waits for the cache too.
    """
    return lambda: poller.ready and cache.serves_successful_poll


def serve(
    settings: Settings, source: Source, *, web_config: WebConfigReloader | None = None
) -> int:
    """Run until SIGTERM or SIGINT; SIGHUP re-reads ``web_config``."""
    cache = MetricsCache(
        metric_set=MetricSet(
            queries=settings.queries(),
            vcpu_collector=settings.vcpu_collector,
            host_stats=settings.host_stats(),
        ),
        process_metrics=ProcessMetrics(),
        report_render_duration=True,
    )
    poller = make_poller(settings, source, cache)
    app = WebApp(
        cache=cache, is_ready=readiness(poller, cache), telemetry_path=settings.telemetry_path
    )
    try:
        server = ExporterServer(
            settings.listen_address,
            app=app,
            max_requests=settings.max_requests,
            request_timeout=settings.request_timeout_seconds,
            security=lambda: web_config.current if web_config is not None else PLAIN_HTTP,
        )
    except OSError as error:
        log.error(
            "cannot listen", extra={"address": str(settings.listen_address), "err": str(error)}
        )
        return EXIT_FAILURE

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        poller.stop()

    def on_hangup(_signum: int, _frame: FrameType | None) -> None:
        if web_config is None:
            log.info("SIGHUP: no --web.config.file to re-read")
        else:
            web_config.request_reload()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    if web_config is not None:
        web_config.start()
    web_thread = threading.Thread(target=server.serve_forever, name="guestload-http", daemon=True)
    web_thread.start()
    log.info(
        "listening",
        extra={"address": str(settings.listen_address), "path": settings.telemetry_path},
    )
    try:
        poller.run()
    finally:
        server.shutdown()
        server.server_close()
        poller.close()
        if web_config is not None:
            web_config.stop()
    return 0


def run(settings: Settings, *, web_config: WebConfigReloader | None = None) -> int:
    """Log the start, then serve the configured source until stopped."""
    source = make_source(settings)
    log.info(
        "starting guestload",
        extra={
            "version": __version__,
            "source": settings.source,
            "uri": source.facts().uri,
            "node": settings.node,
            "interval": format_duration(settings.poll_interval_seconds),
            "agent_timeout": format_duration(settings.agent_timeout_seconds),
            "agent_backoff_max": format_duration(settings.agent_backoff_max_seconds),
        },
    )
    if os.geteuid() == 0:
        log.warning(
            "running as root; guestload needs only read-write access to the hypervisor's socket"
        )
    return serve(settings, source, web_config=web_config)
