"""The metric set: every family guestload exports, and which samples a snapshot gives it.

This module is the one list of the metrics. Its :class:`~guestload.metricspec.MetricSpec`
constants name the exporter's own families (each guest-agent query and each host stat names its
own families in its module, with the same description from :mod:`guestload.metricspec`; their
registries keep their names apart from these); a :class:`MetricSet` says which families one
configuration exports and which samples a snapshot gives them. The exposition writer
(:mod:`guestload.exposition.writer`, what ``/metrics`` serves) and the metrics reference
(:mod:`guestload.cli.docs`) read it. Pure: it reads only the snapshot it is given.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from guestload import __version__
from guestload.metricspec import VM_LABELS, MetricSpec, MetricType, VmSample
from guestload.model import AgentState, DomainSample, Identity, Snapshot, SourceFacts

if TYPE_CHECKING:
    from guestload.hoststats.hoststat import HostStat
    from guestload.queries.query import GuestQuery

VCPU_LABELS = (*VM_LABELS, "id")
SOURCE_FACT_LABELS: tuple[tuple[str, Callable[[SourceFacts], str]], ...] = (
    ("libvirt_library_version", lambda facts: facts.library_version),
    ("libvirt_daemon_version", lambda facts: facts.daemon_version),
    ("load_method", lambda facts: facts.load_method),
    ("uri", lambda facts: facts.uri),
)
"""``guestload_build_info``'s label for each of the source's facts
(:class:`~guestload.model.SourceFacts`). The label names are public (users' queries join on
them) and older than sources other than libvirt; the facts are the hypervisor connection's."""
BUILD_INFO_LABELS = ("version", "python_version", *(label for label, _ in SOURCE_FACT_LABELS))
"""``guestload_build_info``'s labels: the version, the snapshot's build info (the Python
version) and the source's facts."""

# -- per VM --------------------------------------------------------------------------------------

AGENT_STATE = MetricSpec(
    "guestload_agent_state",
    MetricType.GAUGE,
    "Outcome of the last call of each guest-agent query for a running VM: 1 for the current "
    "state (ok, not_configured, not_connected, unsupported, timeout, no_data, invalid, busy, "
    "gone, error).",
    (*VM_LABELS, "query", "state"),
)
DOMAIN_INFO = MetricSpec(
    "guestload_domain_info",
    MetricType.GAUGE,
    "The libvirt domain behind a running VM: its name and UUID (for OpenStack, the "
    "instance UUID). Always 1.",
    (*VM_LABELS, "domain", "uuid"),
)
VCPU_SECONDS = MetricSpec(
    "kubevirt_vmi_vcpu_seconds",
    MetricType.COUNTER,
    "Cumulative time a vCPU ran, labelled with the vCPU's current state.",
    (*VCPU_LABELS, "state"),
)
VCPU_DELAY = MetricSpec(
    "kubevirt_vmi_vcpu_delay_seconds",
    MetricType.COUNTER,
    "Cumulative time a vCPU was runnable but waited for a host CPU (host contention).",
    VCPU_LABELS,
)
VCPU_WAIT = MetricSpec(
    "kubevirt_vmi_vcpu_wait_seconds",
    MetricType.COUNTER,
    "Cumulative time a vCPU waited for I/O.",
    VCPU_LABELS,
)

VM_FAMILIES = (AGENT_STATE, DOMAIN_INFO)
"""Per-VM families of every configuration; the queries' own come before them."""
VCPU_FAMILIES = (VCPU_SECONDS, VCPU_DELAY, VCPU_WAIT)
"""Left out with ``--no-collector.vcpu``."""

# -- the exporter's own health -------------------------------------------------------------------

# The hypervisor connection's health. The names of these families are public and older than
# sources other than libvirt; they stand for whichever hypervisor connection the source keeps.
HYPERVISOR_UP = MetricSpec(
    "guestload_libvirt_up",
    MetricType.GAUGE,
    "1 if the last poll reached libvirt, 0 if the connection is down.",
)
CONNECTION_UP = MetricSpec(
    "guestload_libvirt_socket_up",
    MetricType.GAUGE,
    "1 if the libvirt daemon behind this socket (a virt-launcher pod's, with "
    "--libvirt.socket-glob) answered the last listing, 0 while it is down. pod_uid is from the "
    "socket's kubelet path; namespace and name are the VM's, from its domain, kept while the "
    "socket is down.",
    ("socket", "pod_uid", "namespace", "name"),
)
DOMAINS = MetricSpec(
    "guestload_domains",
    MetricType.GAUGE,
    "Running domains found by the last successful poll.",
)
IDENTITY_CONFLICTS = MetricSpec(
    "guestload_identity_conflicts",
    MetricType.GAUGE,
    "Running domains not exported because another domain resolves to the same "
    "namespace, name and node (the log names them).",
)
POLLS = MetricSpec("guestload_polls", MetricType.COUNTER, "Polls started.")
POLL_FAILURES = MetricSpec(
    "guestload_poll_failures",
    MetricType.COUNTER,
    "Polls that could not list domains (libvirt unreachable).",
)
POLL_DURATION = MetricSpec(
    "guestload_poll_duration_seconds",
    MetricType.GAUGE,
    "Wall time of the last poll, guest-agent calls included.",
)
LAST_POLL_SUCCESS = MetricSpec(
    "guestload_last_poll_success_timestamp_seconds",
    MetricType.GAUGE,
    "Unix time at which the last successful poll finished.",
)
AGENT_CALLS = MetricSpec(
    "guestload_agent_calls",
    MetricType.COUNTER,
    "Guest-agent queries by query and outcome (the agent state they produced).",
    ("query", "state"),
)
BUILD_INFO = MetricSpec(
    "guestload_build_info",
    MetricType.GAUGE,
    "Build and runtime facts; always 1.",
    BUILD_INFO_LABELS,
)

EXPORTER_FAMILIES = (
    HYPERVISOR_UP,
    CONNECTION_UP,
    DOMAINS,
    IDENTITY_CONFLICTS,
    POLLS,
    POLL_FAILURES,
    POLL_DURATION,
    LAST_POLL_SUCCESS,
    AGENT_CALLS,
    BUILD_INFO,
)
RENDER_DURATION = MetricSpec(
    "guestload_render_duration_seconds",
    MetricType.GAUGE,
    "Wall time spent rendering and compressing the last poll's exposition.",
)
LIVE_FAMILIES = (RENDER_DURATION,)
"""Families measured at scrape time, after the snapshot's (see guestload.exposition.cache)."""
FIXED_FAMILIES = (*VM_FAMILIES, *VCPU_FAMILIES, *EXPORTER_FAMILIES, *LIVE_FAMILIES)
"""Every family the exporter has of its own; no guest-agent query or host stat may export one of
their names (:class:`~guestload.registration.Claims` refuses it)."""

# -- samples -------------------------------------------------------------------------------------

LabelledValue = tuple[Mapping[str, str], float]
"""An exporter-wide sample: label name -> value, and the value."""


def vm_label_values(identity: Identity) -> tuple[str, str, str]:
    """A VM's values of :data:`VM_LABELS`, in that order."""
    return (identity.namespace, identity.name, identity.node)


@dataclass(frozen=True, slots=True)
class MetricSet:
    """The families one configuration exports: its guest-agent queries', its host stats' and
    the rest."""

    queries: Sequence[GuestQuery]
    vcpu_collector: bool = True
    host_stats: Sequence[HostStat] = ()

    def vm_families(self) -> tuple[MetricSpec, ...]:
        """The per-VM families, in exposition order (each present even when empty)."""
        query_families = tuple(spec for query in self.queries for spec in query.families)
        vcpu_families = VCPU_FAMILIES if self.vcpu_collector else ()
        host_families = tuple(spec for stat in self.host_stats for spec in stat.families)
        return (*query_families, *VM_FAMILIES, *vcpu_families, *host_families)

    def all_families(self) -> tuple[MetricSpec, ...]:
        """Every family of a snapshot, in exposition order."""
        return (*self.vm_families(), *EXPORTER_FAMILIES)

    def domain_samples(self, domain: DomainSample) -> Iterator[VmSample]:
        """One VM's samples; its own labels' values are :func:`vm_label_values`."""
        for query in self.queries:
            reading = domain.readings.get(query.name)
            if reading is None:
                continue
            yield AGENT_STATE, (query.name, reading.state.value), 1.0
            if reading.state is AgentState.OK:
                yield from query.samples(reading.value)
        yield DOMAIN_INFO, (domain.domain_name, domain.uuid), 1.0
        if self.vcpu_collector:
            for vcpu in domain.vcpus:
                vcpu_id = str(vcpu.id)
                if vcpu.time_seconds is not None:
                    yield VCPU_SECONDS, (vcpu_id, vcpu.state.value), vcpu.time_seconds
                if vcpu.delay_seconds is not None:
                    yield VCPU_DELAY, (vcpu_id,), vcpu.delay_seconds
                if vcpu.wait_seconds is not None:
                    yield VCPU_WAIT, (vcpu_id,), vcpu.wait_seconds
        for host_stat in self.host_stats:
            value = domain.host_stats.get(host_stat.name)
            if value is not None:
                yield from host_stat.samples(value)

    def exporter_families(self, snapshot: Snapshot) -> list[tuple[MetricSpec, list[LabelledValue]]]:
        """The exporter's own families with their samples, in exposition order.

        A family whose value is not known yet (no poll finished) is left out entirely, and so
        is the per-connection family where the source keeps one connection.
        """
        families: list[tuple[MetricSpec, list[LabelledValue]]] = [
            (HYPERVISOR_UP, [({}, 1.0 if snapshot.source_up else 0.0)]),
            *_connection_families(snapshot),
            (DOMAINS, [({}, float(len(snapshot.domains) + snapshot.identity_conflicts))]),
            (IDENTITY_CONFLICTS, [({}, float(snapshot.identity_conflicts))]),
            (POLLS, [({}, float(snapshot.polls_total))]),
            (POLL_FAILURES, [({}, float(snapshot.poll_failures_total))]),
        ]
        if snapshot.last_poll_duration_seconds is not None:
            families.append((POLL_DURATION, [({}, snapshot.last_poll_duration_seconds)]))
        if snapshot.last_success_timestamp_seconds is not None:
            families.append((LAST_POLL_SUCCESS, [({}, snapshot.last_success_timestamp_seconds)]))
        calls = snapshot.agent_calls_total
        families.append(
            (
                AGENT_CALLS,
                [
                    (labels, float(calls.get(key, 0)))
                    for key, labels in _agent_call_labels(tuple(q.name for q in self.queries))
                ],
            )
        )
        families.append(
            (
                BUILD_INFO,
                [({"version": __version__, **snapshot.build_info, **_fact_labels(snapshot)}, 1.0)],
            )
        )
        return families


@functools.cache
def _agent_call_labels(
    queries: tuple[str, ...],
) -> tuple[tuple[tuple[str, AgentState], Mapping[str, str]], ...]:
    """Each (query, state) of the agent call counter and its labels: the same every poll."""
    return tuple(
        ((query, state), MappingProxyType({"query": query, "state": state.value}))
        for query in queries
        for state in AgentState
    )


def _fact_labels(snapshot: Snapshot) -> dict[str, str]:
    """The source's facts as ``guestload_build_info`` labels; none before its first connection."""
    facts = snapshot.source
    if facts is None:
        return {}
    return {label: fact(facts) for label, fact in SOURCE_FACT_LABELS}


def _connection_families(snapshot: Snapshot) -> list[tuple[MetricSpec, list[LabelledValue]]]:
    """The per-connection family where the source keeps several (present, maybe empty)."""
    if snapshot.connections is None:
        return []
    samples: list[LabelledValue] = [
        (
            {
                "socket": health.address,
                "pod_uid": health.pod_uid,
                "namespace": health.namespace,
                "name": health.name,
            },
            1.0 if health.up else 0.0,
        )
        for health in snapshot.connections
    ]
    return [(CONNECTION_UP, samples)]
