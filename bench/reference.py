"""The snapshot's samples as prometheus_client builds them: the reference exposition.

guestload writes its exposition itself (:mod:`guestload.exposition.writer`); the tests compare
that output byte for byte with prometheus_client's rendering of these families, and the render
benchmark measures both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from guestload.exposition.schema import MetricSet, vm_label_values
from guestload.metricspec import MetricSpec, MetricType
from guestload.model import Snapshot


def _family(spec: MetricSpec, labels: Sequence[str]) -> GaugeMetricFamily | CounterMetricFamily:
    if spec.type is MetricType.COUNTER:
        return CounterMetricFamily(spec.name, spec.help, labels=labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=labels)


def metric_families(snapshot: Snapshot, *, metric_set: MetricSet) -> list[Metric]:
    """Every family for ``snapshot`` as prometheus_client builds them, in exposition order."""
    per_vm = {spec: _family(spec, spec.labels) for spec in metric_set.vm_families()}
    for domain in snapshot.domains:
        vm = vm_label_values(domain.identity)
        for spec, extra, value in metric_set.domain_samples(domain):
            per_vm[spec].add_metric((*vm, *extra), value)
    families: list[Metric] = list(per_vm.values())
    for spec, samples in metric_set.exporter_families(snapshot):
        names = tuple(samples[0][0]) if samples else ()
        family = _family(spec, names)
        for labels, value in samples:
            family.add_metric([labels[name] for name in names], value)
        families.append(family)
    return families


class SnapshotCollector(Collector):
    """A prometheus_client collector over one fixed snapshot."""

    def __init__(self, snapshot: Snapshot, *, metric_set: MetricSet) -> None:
        self._snapshot = snapshot
        self._metric_set = metric_set

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self._snapshot, metric_set=self._metric_set)
