"""Hostile guest answers and label values, and the path from an answer to a scrape body.

Each generated case runs the real path: the answer is judged by :mod:`guestload.queries.load`,
a :class:`~guestload.polling.poller.Poller` polls it next to two healthy VMs, the
:class:`~guestload.exposition.cache.MetricsCache` renders it, and prometheus_client's parsers
(text and OpenMetrics) read it back. A sample of the text bodies is kept for checks that need
an external program (``promtool check metrics`` in ``tests/security``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from guestload.exposition.cache import MetricsCache
from guestload.exposition.schema import MetricSet
from guestload.identity import KUBEVIRT_UID_KEY, IdentityResolver
from guestload.model import (
    AgentState,
    DomainInventory,
    Identity,
    QueryReading,
    VcpuStat,
    VcpuState,
)
from guestload.polling.poller import Poller
from guestload.queries.load import (
    MAX_LOAD,
    MAX_PASSTHROUGH_REPLY_CHARS,
    GuestLoad,
    parse_agent_passthrough,
    parse_guest_info_load,
)
from tests.exposition import scraped
from tests.unit.fakes import LOAD_ONLY, FakeSource, ok

DEFAULT_NAMESPACE = "libvirt"
LOAD_FAMILIES = {
    "kubevirt_vmi_guest_load_1m": 0,
    "kubevirt_vmi_guest_load_5m": 1,
    "kubevirt_vmi_guest_load_15m": 2,
}
HEALTHY = {
    "healthy-a": (0.5, 0.25, 0.125),
    "healthy-b": (3.0, 2.0, 1.0),
}

# -- strategies -------------------------------------------------------------------------------

_hostile_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=MAX_LOAD * 2),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -0.0, 1e-320, MAX_LOAD, MAX_LOAD + 1, 10**400, -1, 2**63, True, False]),
)
_json_scalars = st.one_of(st.none(), st.booleans(), _hostile_numbers, st.text(max_size=12))
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
_guest_info_keys = ("load.1m", "load.5m", "load.15m")
_passthrough_keys = ("load1m", "load5m", "load15m")


def _load_mapping(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, object]]:
    """Mappings with some, all or none of ``keys`` (numbers or junk), plus extra keys."""
    return st.fixed_dictionaries(
        {},
        optional={key: _hostile_numbers | _json_values for key in keys}
        | {"extra": _json_values, "load.2m": _hostile_numbers},
    )


_loads = st.floats(min_value=0, max_value=MAX_LOAD) | st.integers(0, int(MAX_LOAD))


def _valid_mapping(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, object]]:
    """Real load averages, with or without extra keys."""
    return st.fixed_dictionaries({key: _loads for key in keys}, optional={"extra": _json_values})


def oversized_reply(size: int) -> str:
    return json.dumps({"return": {"load1m": 1, "load5m": 1, "load15m": 1, "pad": "x" * size}})


@dataclass(frozen=True)
class Answer:
    """One thing a guest (or a broken libvirt) may hand back, and how it is judged."""

    kind: str
    payload: object

    def judge(self) -> QueryReading:
        if self.kind == "guest_info":
            return parse_guest_info_load(self.payload)
        return parse_agent_passthrough(self.payload)


answers = st.one_of(
    _valid_mapping(_guest_info_keys).map(lambda m: Answer("guest_info", m)),
    _valid_mapping(_passthrough_keys).map(
        lambda m: Answer("passthrough", json.dumps({"return": m}, allow_nan=True))
    ),
    _load_mapping(_guest_info_keys).map(lambda m: Answer("guest_info", m)),
    st.one_of(st.none(), st.lists(_json_scalars, max_size=3), st.text(max_size=10)).map(
        lambda v: Answer("guest_info", v)
    ),
    _load_mapping(_passthrough_keys).map(
        lambda m: Answer("passthrough", json.dumps({"return": m}, allow_nan=True))
    ),
    _json_values.map(lambda v: Answer("passthrough", json.dumps(v, allow_nan=True))),
    st.text(max_size=64).map(lambda t: Answer("passthrough", t)),
    st.integers(MAX_PASSTHROUGH_REPLY_CHARS - 64, MAX_PASSTHROUGH_REPLY_CHARS + 64).map(
        lambda n: Answer("passthrough", oversized_reply(n))
    ),
    st.dictionaries(st.sampled_from(["class", "desc"]), _json_values, max_size=2).map(
        lambda e: Answer("passthrough", json.dumps({"error": e}, allow_nan=True))
    ),
    st.none().map(lambda _: Answer("passthrough", None)),
)

# libvirt hands names over as UTF-8 C strings: any character but NUL and lone surrogates.
_characters = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
_tricky = st.sampled_from(
    ['"', "\\", "\n", "\\n", '\\"', "{", "}", "=", ",", "\u2028", "\u202e", "💥", "é", " ", "\t"]
)
label_values = st.one_of(
    st.text(_characters, min_size=1, max_size=40),
    st.lists(_tricky | st.text(_characters, max_size=3), min_size=1, max_size=12).map("".join),
    st.tuples(st.integers(200, 4000), _tricky).map(lambda t: ("v" * t[0]) + t[1]),
).filter(lambda value: value.strip() != "")


@dataclass(frozen=True)
class Guest:
    domain_name: str
    kubevirt: bool
    node: str


guests = st.builds(Guest, domain_name=label_values, kubevirt=st.booleans(), node=label_values)

# -- the path under test ------------------------------------------------------------------------


@dataclass
class Exposition:
    text: str
    openmetrics: str
    reading: QueryReading
    victim: Identity
    healthy: dict[str, Identity] = field(default_factory=dict)


def expose(answer: Answer, guest: Guest) -> Exposition:
    """Poll the victim next to two healthy VMs and render both formats."""
    metadata = {KUBEVIRT_UID_KEY: "0f6c2d7e"} if guest.kubevirt else {}
    domains = [
        DomainInventory(
            uuid="victim",
            domain_name=guest.domain_name,
            vcpu_count=1,
            vcpus=(VcpuStat(0, VcpuState.RUNNING, 1.5, 0.25, 0.5),),
            metadata=metadata,
        )
    ]
    domains += [DomainInventory(uuid=name, domain_name=name, vcpu_count=1) for name in HEALTHY]
    reading = answer.judge()
    source = FakeSource(domains=domains)
    source.answers["victim"] = reading
    for name, loads in HEALTHY.items():
        source.answers[name] = ok(*loads)
    resolver = IdentityResolver(node=guest.node, default_namespace=DEFAULT_NAMESPACE)
    cache = MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True))
    poller = Poller(
        source=source,
        queries=LOAD_ONLY,
        identity=resolver,
        poll_interval_seconds=60.0,
        agent_timeout_seconds=5.0,
        concurrency=3,
        agent_backoff_max_seconds=600.0,
        on_snapshot=cache.update,
        build_info={},
    )
    try:
        poller.poll()
    finally:
        poller.close()
    return Exposition(
        text=scraped(cache).decode(),
        openmetrics=scraped(cache, openmetrics=True).decode(),
        reading=reading,
        victim=resolver.resolve(domains[0]),
        healthy={d.domain_name: resolver.resolve(d) for d in domains[1:]},
    )


LONG_TRICKY_NAME = "a" * 5000 + '"\\\n\u2028💥'
"""A domain name far longer than usual, ending in characters the text format must escape."""


def long_tricky_exposition() -> Exposition:
    """A VM named :data:`LONG_TRICKY_NAME` on a node with a backslash, answering normally."""
    return expose(
        Answer("guest_info", {"load.1m": 1, "load.5m": 2, "load.15m": 3}),
        Guest(domain_name=LONG_TRICKY_NAME, kubevirt=False, node="node\\1"),
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(families: object) -> Samples:
    samples: Samples = {}
    for family in families:  # type: ignore[attr-defined]
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def _vm_labels(identity: Identity) -> frozenset[tuple[str, str]]:
    return frozenset(
        {"namespace": identity.namespace, "name": identity.name, "node": identity.node}.items()
    )


def check_exposition(exposition: Exposition) -> None:
    """Both formats parse; healthy VMs keep their values; the victim is exact or absent."""
    for samples in (
        _samples(parse_text(exposition.text)),
        _samples(parse_openmetrics(exposition.openmetrics)),  # type: ignore[no-untyped-call]
    ):
        for name, identity in exposition.healthy.items():
            for family, index in LOAD_FAMILIES.items():
                assert samples[(family, _vm_labels(identity))] == HEALTHY[name][index]
        victim = _vm_labels(exposition.victim)
        state = frozenset({*victim, ("query", "load"), ("state", exposition.reading.state.value)})
        assert samples[("guestload_agent_state", state)] == 1.0
        load = exposition.reading.value
        assert load is None or isinstance(load, GuestLoad)
        for family, index in LOAD_FAMILIES.items():
            value = samples.get((family, victim))
            if load is None:
                assert value is None, f"{family} exported for a VM in state {state}"
            else:
                assert value is not None
                assert value == (load.one, load.five, load.fifteen)[index]
                assert math.isfinite(value)
                assert 0 <= value <= MAX_LOAD
        vm_series = [key for key in samples if key[0].startswith("kubevirt_vmi_guest_load")]
        assert len(vm_series) == 3 * (len(HEALTHY) + (load is not None))


@dataclass
class Run:
    cases: int = 0
    states: dict[AgentState, int] = field(default_factory=dict)
    sampled_bodies: list[str] = field(default_factory=list)


def run_cases(
    *,
    cases: int,
    keep_bodies: int,
    answer_strategy: st.SearchStrategy[Answer] = answers,
    derandomize: bool = False,
) -> Run:
    """Run ``cases`` generated cases; keep every n-th text body, ``keep_bodies`` in all.

    ``derandomize`` draws the same cases every run (a fixed seed) instead of new ones.
    """
    run = Run()
    keep_every = max(cases // max(keep_bodies, 1), 1)

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(answer=answer_strategy, guest=guests)
    def check(answer: Answer, guest: Guest) -> None:
        victim_identity = IdentityResolver(
            node=guest.node, default_namespace=DEFAULT_NAMESPACE
        ).resolve(
            DomainInventory(
                uuid="victim",
                domain_name=guest.domain_name,
                metadata={KUBEVIRT_UID_KEY: "x"} if guest.kubevirt else {},
            )
        )
        # Two VMs with one identity would be one series: not the subject here.
        assume(
            victim_identity.namespace != DEFAULT_NAMESPACE or victim_identity.name not in HEALTHY
        )
        exposition = expose(answer, guest)
        check_exposition(exposition)
        run.cases += 1
        state = exposition.reading.state
        run.states[state] = run.states.get(state, 0) + 1
        if run.cases % keep_every == 0 and len(run.sampled_bodies) < keep_bodies:
            run.sampled_bodies.append(exposition.text)

    check()
    return run


def report(run: Run, capsys: pytest.CaptureFixture[str], what: str) -> None:
    states = ", ".join(f"{state.value}={count}" for state, count in sorted(run.states.items()))
    kept = f"; {len(run.sampled_bodies)} bodies kept" if run.sampled_bodies else ""
    with capsys.disabled():
        print(f"\n{what}: {run.cases} cases ({states}){kept}")
