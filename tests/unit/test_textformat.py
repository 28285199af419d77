"""The exposition writer writes exactly what prometheus_client writes for the same families.

prometheus_client's rendering of :func:`bench.reference.metric_families` is the reference:
for generated snapshots (hostile label values, NaN, infinities, huge and negative values, no
VMs, vCPU series on and off) both formats must be equal byte for byte, also when one writer
renders several snapshots in turn and reuses label texts from the previous one.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from bench.reference import SnapshotCollector
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from guestload import __version__
from guestload.exposition.schema import BUILD_INFO_LABELS, MetricSet
from guestload.exposition.writer import SnapshotWriter, _VmLayout, format_value, header_lines
from guestload.hoststats.balloon import BalloonStats
from guestload.hoststats.catalog import ALL_HOST_STATS
from guestload.metricspec import VM_LABELS, MetricSpec, MetricType
from guestload.model import (
    AgentState,
    ConnectionHealth,
    DomainSample,
    Identity,
    QueryReading,
    Snapshot,
    SourceFacts,
    VcpuStat,
    VcpuState,
)
from guestload.queries.catalog import ALL_QUERIES
from guestload.queries.load import GuestLoad
from guestload.simulation import Simulation
from guestload.sources.simulated import SimulatedSource
from tests.unit.snapshots import sample_snapshot

GOLDEN = Path(__file__).parent / "golden" / "metrics.prom"


def reference(snapshot: Snapshot, *, vcpu_collector: bool, openmetrics_format: bool) -> bytes:
    """prometheus_client's exposition of the same families."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        SnapshotCollector(
            snapshot,
            metric_set=MetricSet(
                host_stats=ALL_HOST_STATS, queries=ALL_QUERIES, vcpu_collector=vcpu_collector
            ),
        )
    )
    if openmetrics_format:
        body: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
        return body
    return exposition.generate_latest(registry)


def written(writer: SnapshotWriter, snapshot: Snapshot, *, openmetrics_format: bool) -> bytes:
    body = writer.render(snapshot).body(openmetrics_format=openmetrics_format)
    return body + b"# EOF\n" if openmetrics_format else body


# -- strategies -------------------------------------------------------------------------------

_characters = st.characters(exclude_categories=["Cs"])
_tricky = st.sampled_from(['"', "\\", "\n", "\\n", '\\"', "{", "}", "=", ",", "\u2028", "💥", ""])
label_values = st.one_of(
    st.text(_characters, max_size=12),
    st.lists(_tricky | st.text(_characters, max_size=3), max_size=6).map("".join),
    st.sampled_from(["web-1", "prod", "node-1"]),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1e12),
    st.sampled_from([0.0, -0.0, 1.0, 1e6, 999_999.9, 1_000_000.0, 1.7e9, 1e22, 5e-324]),
)
counts = st.integers(min_value=0, max_value=2**64)
identities = st.builds(Identity, namespace=label_values, name=label_values, node=label_values)
vcpus = st.builds(
    VcpuStat,
    id=st.integers(min_value=0, max_value=512),
    state=st.sampled_from(VcpuState),
    time_seconds=st.none() | numbers,
    wait_seconds=st.none() | numbers,
    delay_seconds=st.none() | numbers,
)
domains = st.builds(
    DomainSample,
    uuid=label_values,
    domain_name=label_values,
    identity=identities,
    readings=st.one_of(
        st.builds(
            lambda load: {"load": QueryReading(state=AgentState.OK, value=load)},
            st.builds(GuestLoad, one=numbers, five=numbers, fifteen=numbers),
        ),
        st.sampled_from([s for s in AgentState if s is not AgentState.OK]).map(
            lambda state: {"load": QueryReading(state=state)}
        ),
    ),
    vcpu_count=st.none() | st.integers(0, 64),
    vcpus=st.lists(vcpus, max_size=4).map(tuple),
    host_stats=st.one_of(
        st.just({}),
        st.builds(
            lambda balloon: {"balloon": balloon},
            st.builds(
                BalloonStats,
                **{
                    name: st.none() | st.integers(min_value=0, max_value=2**63)
                    for name in BalloonStats.__dataclass_fields__
                    if name not in {"rates", "rates_age_seconds"}
                },
                rates=st.lists(
                    st.tuples(st.sampled_from(["swap_in_bytes", "major_faults"]), numbers),
                    max_size=2,
                ).map(tuple),
            ),
        ),
    ),
)
label_names = st.one_of(
    st.sampled_from(BUILD_INFO_LABELS),
    st.sampled_from(["", "1abc", "__reserved", "a-b", "é", "ok\n", "a b", "_0"]),
    st.text(_characters, max_size=8),
)
snapshots = st.builds(
    Snapshot,
    source_up=st.booleans(),
    domains=st.lists(domains, max_size=5).map(tuple),
    polls_total=counts,
    poll_failures_total=counts,
    last_poll_duration_seconds=st.none() | numbers,
    last_success_timestamp_seconds=st.none() | numbers,
    agent_calls_total=st.dictionaries(st.sampled_from(AgentState), counts),
    build_info=st.dictionaries(label_names, label_values, max_size=4),
    source=st.none()
    | st.builds(
        SourceFacts,
        library_version=label_values,
        daemon_version=label_values,
        load_method=label_values,
        uri=label_values,
    ),
    identity_conflicts=st.integers(min_value=0, max_value=10_000),
    connections=st.none()
    | st.lists(
        st.builds(
            ConnectionHealth,
            address=label_values,
            up=st.booleans(),
            pod_uid=label_values,
            namespace=label_values,
            name=label_values,
        ),
        max_size=3,
    ).map(tuple),
)

# -- the tests --------------------------------------------------------------------------------


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(sequence=st.lists(snapshots, min_size=1, max_size=3), vcpu_collector=st.booleans())
def test_both_formats_equal_prometheus_client_byte_for_byte(
    sequence: list[Snapshot], vcpu_collector: bool
) -> None:
    writer = SnapshotWriter(
        metric_set=MetricSet(
            host_stats=ALL_HOST_STATS, queries=ALL_QUERIES, vcpu_collector=vcpu_collector
        )
    )
    for snapshot in sequence:
        for openmetrics_format in (False, True):
            assert written(writer, snapshot, openmetrics_format=openmetrics_format) == reference(
                snapshot, vcpu_collector=vcpu_collector, openmetrics_format=openmetrics_format
            )


@pytest.mark.parametrize("vcpu_collector", [True, False])
def test_simulated_vms_polled_twice_render_as_prometheus_client_does(vcpu_collector: bool) -> None:
    """Realistic values (large vCPU counters in exponent form), the same VMs in two renders."""
    source = SimulatedSource(
        simulation=Simulation(vms=40, seed=7), churn_thread=False, host_stats=ALL_HOST_STATS
    )
    source.connect()
    writer = SnapshotWriter(
        metric_set=MetricSet(
            host_stats=ALL_HOST_STATS, queries=ALL_QUERIES, vcpu_collector=vcpu_collector
        )
    )
    for poll in (1, 2):
        snapshot = Snapshot(
            source_up=True,
            domains=tuple(
                DomainSample(
                    uuid=inventory.uuid,
                    domain_name=inventory.domain_name,
                    identity=Identity("ns", inventory.domain_name, "node-1"),
                    readings={
                        "load": QueryReading(
                            state=AgentState.OK, value=GuestLoad(0.5 * poll, 1.25, 1e7 + poll)
                        )
                    },
                    vcpu_count=inventory.vcpu_count,
                    vcpus=inventory.vcpus,
                    host_stats=inventory.host_stats,
                )
                for inventory in source.list_running_domains()
            ),
            polls_total=poll,
        )
        for openmetrics_format in (False, True):
            assert written(writer, snapshot, openmetrics_format=openmetrics_format) == reference(
                snapshot, vcpu_collector=vcpu_collector, openmetrics_format=openmetrics_format
            )
    assert b"e+06" in writer.render(snapshot).body(openmetrics_format=False) or not vcpu_collector


def test_an_empty_snapshot_has_every_family_header_and_no_vm_sample() -> None:
    writer = SnapshotWriter(
        metric_set=MetricSet(host_stats=ALL_HOST_STATS, queries=ALL_QUERIES, vcpu_collector=True)
    )
    body = written(writer, Snapshot(source_up=False), openmetrics_format=False).decode()
    assert (
        body
        == reference(
            Snapshot(source_up=False), vcpu_collector=True, openmetrics_format=False
        ).decode()
    )
    assert "# TYPE kubevirt_vmi_vcpu_seconds_total counter\n" in body
    assert "kubevirt_vmi_guest_load_1m{" not in body
    assert "guestload_libvirt_up 0.0\n" in body


def test_the_reference_renders_the_golden_file_too() -> None:
    body = reference(sample_snapshot(), vcpu_collector=True, openmetrics_format=False).decode()
    assert body.replace(f'version="{__version__}"', 'version="VERSION"') == GOLDEN.read_text()


@given(value=st.floats() | st.integers(min_value=-(2**1000), max_value=2**1000) | st.booleans())
@settings(max_examples=500, deadline=None, database=None)
def test_values_are_formatted_as_prometheus_client_formats_them(value: float) -> None:
    assert format_value(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


class _Families(Collector):
    def __init__(self, *families: Metric) -> None:
        self._families = families

    def collect(self) -> tuple[Metric, ...]:
        return self._families


@given(help_text=st.text(_characters, max_size=20) | _tricky, kind=st.sampled_from(MetricType))
@settings(max_examples=100, deadline=None, database=None)
def test_help_and_type_lines_are_written_as_prometheus_client_writes_them(
    help_text: str, kind: MetricType
) -> None:
    family_type = CounterMetricFamily if kind is MetricType.COUNTER else GaugeMetricFamily
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(family_type("x", help_text)))
    text_headers, openmetrics_headers = header_lines(MetricSpec("x", kind, help_text))
    assert text_headers.encode() == exposition.generate_latest(registry)
    assert (openmetrics_headers + "# EOF\n").encode() == openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1.0"),
        (0.125, "0.125"),
        (1_700_000_000.0, "1.7e+09"),
        (1234567.5, "1.2345675e+06"),
        (999_999.5, "999999.5"),
        (-1234567.5, "-1234567.5"),
        (1e22, "1e+22"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_value_formats(value: float, text: str) -> None:
    assert format_value(value) == text


def test_every_family_is_described_once() -> None:
    names = [
        spec.sample_name
        for spec in MetricSet(host_stats=ALL_HOST_STATS, queries=ALL_QUERIES).all_families()
    ]
    assert len(set(names)) == len(names)


def test_samples_carry_the_labels_their_family_declares() -> None:
    snapshot = sample_snapshot()
    for domain in snapshot.domains:
        for spec, extra, _ in MetricSet(
            host_stats=ALL_HOST_STATS, queries=ALL_QUERIES
        ).domain_samples(domain):
            assert len(VM_LABELS) + len(extra) == len(spec.labels), spec.name
    for spec, samples in MetricSet(
        host_stats=ALL_HOST_STATS, queries=ALL_QUERIES
    ).exporter_families(snapshot):
        for labels, _ in samples:
            assert set(labels) <= set(spec.labels), spec.name


def test_a_per_vm_label_sorting_between_the_vm_labels_is_refused() -> None:
    spec = MetricSpec("x", MetricType.GAUGE, "x", (*VM_LABELS, "nb"))  # name < nb < node
    with pytest.raises(ValueError, match="sort before or after"):
        _VmLayout(spec)


@pytest.mark.parametrize(
    ("name", "kind", "labels"),
    [
        ("bad-name", MetricType.GAUGE, ()),
        ("x_total", MetricType.COUNTER, ()),
        ("x", MetricType.GAUGE, ("bad-label",)),
        ("x", MetricType.GAUGE, ("__reserved",)),
        ("x", MetricType.GAUGE, ("a", "a")),
    ],
)
def test_metric_specs_are_checked(name: str, kind: MetricType, labels: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=r"invalid|_total|duplicate"):
        MetricSpec(name, kind, "help", labels)


def test_build_info_documents_every_label_a_snapshot_gives_it() -> None:
    writer = SnapshotWriter(metric_set=MetricSet(queries=ALL_QUERIES))
    facts = SimulatedSource(simulation=Simulation(vms=0)).facts()
    # The version is guestload's own; the CLI adds the Python version; the rest are the source's.
    snapshot = Snapshot(source_up=True, build_info={"python_version": "3.11.7"}, source=facts)
    body = written(writer, snapshot, openmetrics_format=False).decode()
    (line,) = (line for line in body.splitlines() if line.startswith("guestload_build_info{"))
    labels = {
        pair.partition("=")[0] for pair in line.partition("{")[2].partition("}")[0].split(",")
    }
    assert labels == set(BUILD_INFO_LABELS)
    assert 'load_method="simulated"' in line
    assert 'libvirt_daemon_version="none"' in line


def test_build_info_has_no_source_labels_before_the_first_connection() -> None:
    writer = SnapshotWriter(metric_set=MetricSet(queries=ALL_QUERIES))
    body = written(writer, Snapshot(source_up=False), openmetrics_format=False).decode()
    assert f'guestload_build_info{{version="{__version__}"}} 1.0\n' in body


def test_connection_health_is_a_family_only_where_the_source_keeps_several() -> None:
    writer = SnapshotWriter(
        metric_set=MetricSet(host_stats=ALL_HOST_STATS, queries=ALL_QUERIES, vcpu_collector=True)
    )
    single = written(writer, Snapshot(source_up=True), openmetrics_format=False).decode()
    assert "guestload_libvirt_socket_up" not in single
    none_yet = written(writer, Snapshot(source_up=True, connections=()), openmetrics_format=False)
    assert b"# TYPE guestload_libvirt_socket_up gauge\n" in none_yet
    assert b"guestload_libvirt_socket_up{" not in none_yet
    snapshot = Snapshot(
        source_up=True,
        connections=(
            ConnectionHealth(
                address="/p/a/sock", up=True, pod_uid="a", namespace="prod", name="web"
            ),
            ConnectionHealth(address="/p/b/sock", up=False, pod_uid="b"),
        ),
    )
    body = written(writer, snapshot, openmetrics_format=False).decode()
    assert (
        'guestload_libvirt_socket_up{name="web",namespace="prod",pod_uid="a",socket="/p/a/sock"} '
        "1.0\n" in body
    )
    assert (
        'guestload_libvirt_socket_up{name="",namespace="",pod_uid="b",socket="/p/b/sock"} 0.0\n'
        in body
    )
