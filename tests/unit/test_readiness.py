"""``/readyz``'s answer: ready only once the cache serves a successful poll's snapshot."""

from __future__ import annotations

from guestload.cli.daemon import readiness
from guestload.exposition.cache import MetricsCache
from guestload.exposition.schema import MetricSet
from guestload.model import DomainInventory, Snapshot
from tests.exposition import scraped
from tests.unit.fakes import LOAD_ONLY, FakeSource, ok
from tests.unit.pollers import Clock, make_poller


def test_not_ready_until_the_cache_holds_the_first_successful_poll() -> None:
    source = FakeSource(
        domains=[DomainInventory(uuid="u1", domain_name="vm1")], answers={"u1": ok(1.5)}
    )
    cache = MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY))
    ready_while_publishing: list[bool] = []
    published: list[Snapshot] = []

    class Handover(list[Snapshot]):
        """The poller's on_snapshot: readiness is asked before the cache has the snapshot."""

        def append(self, snapshot: Snapshot) -> None:
            ready_while_publishing.append(is_ready())
            cache.update(snapshot)
            published.append(snapshot)

    poller = make_poller(source, Clock(), Handover())
    is_ready = readiness(poller, cache)
    try:
        assert not is_ready()
        poller.poll()
        assert poller.ready
        assert ready_while_publishing == [False]
        assert is_ready()
        body = scraped(cache, openmetrics=True).decode()
        assert 'kubevirt_vmi_guest_load_1m{name="vm1",namespace="libvirt",node="node-1"} 1.5' in (
            body
        )

        source.reachable = False
        poller.poll()
        assert not is_ready()
        assert published[-1].source_up is False

        source.reachable = True
        poller.poll()
        assert is_ready()
    finally:
        poller.close()


def test_a_cache_without_a_successful_poll_is_not_serving_data() -> None:
    cache = MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY))
    assert not cache.serves_successful_poll
    cache.update(Snapshot(source_up=False, polls_total=1, poll_failures_total=1))
    assert not cache.serves_successful_poll
    cache.update(Snapshot(source_up=True, polls_total=0))
    assert not cache.serves_successful_poll, "connected, but no poll finished"
    cache.update(Snapshot(source_up=True, polls_total=1, last_success_timestamp_seconds=1.0))
    assert cache.serves_successful_poll
