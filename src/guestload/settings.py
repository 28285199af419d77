"""The exporter's configuration: one frozen object, built and validated before anything starts."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Final

from guestload.hoststats.catalog import HOST_STATS
from guestload.hoststats.hoststat import HostStat
from guestload.hoststats.registry import HostStatSelection
from guestload.identity import IdentityMode
from guestload.queries.catalog import QUERIES
from guestload.queries.query import GuestQuery
from guestload.queries.registry import QuerySelection
from guestload.simulation import Simulation

MAX_SIMULATED_VMS: Final = 100_000

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SECONDS_UP_TO: Final = 600.0
"""Durations shorter than this read in seconds (``120s``), longer ones in minutes (``15m``)."""

AGENT_TIMEOUT_SECONDS: Final = 5.0
"""The agent timeout where the interval leaves room for it (``--collector.agent-timeout``)."""
AGENT_TIMEOUT_SHARE: Final = 0.25
"""An agent timeout left unset is at most this share of the interval. One call asks a domain
up to two queries, each of which may take the timeout: a hung agent's call then ends within
half the interval, and the poll keeps the other half for the rest."""
AGENT_BACKOFF_MAX_SECONDS: Final = 900.0
"""The longest agent back-off where the interval is shorter (``--collector.agent-backoff-max``)."""


def derived_agent_timeout(poll_interval_seconds: float) -> float:
    """The agent timeout when none is given: 5s, or a quarter of a shorter interval."""
    return min(AGENT_TIMEOUT_SECONDS, AGENT_TIMEOUT_SHARE * poll_interval_seconds)


def derived_agent_backoff_max(poll_interval_seconds: float) -> float:
    """The longest agent back-off when none is given: 15m, or the interval when longer."""
    return max(AGENT_BACKOFF_MAX_SECONDS, poll_interval_seconds)


DERIVED_FROM_INTERVAL: Final = {
    "agent_timeout_seconds": derived_agent_timeout,
    "agent_backoff_max_seconds": derived_agent_backoff_max,
}
"""Settings fields whose value, when their flag is not given, follows ``--collector.interval``.
Their defaults below are the values at the default interval."""


class SourceKind(enum.StrEnum):
    """Where VMs come from (``--source``)."""

    LIBVIRT = "libvirt"
    SIMULATED = "simulated"
    """Simulated VMs for load tests, demos and dashboard work."""


class SettingsError(ValueError):
    """A flag's value is unusable; the message names the flag."""


def parse_duration(text: str) -> float:
    """Seconds from a duration like ``500ms``, ``30s``, ``2m``, ``1m30s``, or a plain number."""
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(stripped):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(stripped):
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 2m, 500ms)")
    return total


def format_duration(seconds: float) -> str:
    """A duration the way users type it, read back by :func:`parse_duration`.

    Below a second in ``ms``; from ten minutes on in whole hours or minutes (``1h``, ``15m``)
    where they divide it; otherwise in seconds (``5s``, ``120s``).
    """
    if seconds < 1.0 and seconds != 0.0:
        return f"{seconds * 1000:g}ms"
    if seconds >= _SECONDS_UP_TO:
        for unit in ("h", "m"):
            count = seconds / _UNIT_SECONDS[unit]
            if count == int(count):
                return f"{count:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Parse ``host:port``, ``:port`` (all interfaces) or ``[v6]:port``."""
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"not host:port: {text!r}")
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(host=host, port=port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the exporter's behaviour depends on. Built by the CLI, never mutated.

    Each field's default here is the default of the flag that sets it (:mod:`guestload.cli.flags`).
    """

    libvirt_uri: str = "qemu:///system"
    listen_address: ListenAddress = ListenAddress(host="", port=9977)
    telemetry_path: str = "/metrics"
    poll_interval_seconds: float = 120.0
    agent_timeout_seconds: float = AGENT_TIMEOUT_SECONDS
    concurrency: int = 8
    agent_backoff_max_seconds: float = AGENT_BACKOFF_MAX_SECONDS
    vcpu_collector: bool = True
    query_options: QuerySelection = field(default_factory=QUERIES.defaults)
    """Each guest-agent query's options, set by its ``--collector.*`` flags (its registration
    in :mod:`guestload.queries.catalog`); ``query_options.of(LoadOptions)`` reads one."""
    host_stat_options: HostStatSelection = field(default_factory=HOST_STATS.defaults)
    """Each host stat's options, set by its ``--collector.*`` flags (its registration in
    :mod:`guestload.hoststats.catalog`)."""
    node: str
    default_namespace: str = "libvirt"
    max_requests: int = 16
    request_timeout_seconds: float = 10.0
    log_level: str = "info"
    log_format: str = "logfmt"
    web_config_file: str = ""
    """TLS, basic auth and headers (:mod:`guestload.web.config`); empty for plain HTTP."""
    source: SourceKind = SourceKind.LIBVIRT
    simulation: Simulation = field(default_factory=Simulation)
    """What the simulated source simulates; unused with libvirt."""
    identity_mode: IdentityMode = IdentityMode.AUTO
    socket_glob: str = ""
    """When set, one connection per matching libvirt socket instead of ``libvirt_uri``."""
    socket_uri_template: str = "qemu+unix:///session?socket={socket}"

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (
                self.poll_interval_seconds >= 1.0,
                "--collector.interval",
                "must be at least 1s",
            ),
            (
                0.1 <= self.agent_timeout_seconds < self.poll_interval_seconds,
                "--collector.agent-timeout",
                "must be at least 100ms and shorter than --collector.interval",
            ),
            (1 <= self.concurrency <= 256, "--collector.concurrency", "must be 1 to 256"),
            (
                self.agent_backoff_max_seconds >= self.poll_interval_seconds,
                "--collector.agent-backoff-max",
                "must be at least --collector.interval",
            ),
            (
                self.telemetry_path.startswith("/") and self.telemetry_path != "/",
                "--web.telemetry-path",
                "must start with / and not be /",
            ),
            (bool(self.node.strip()), "--node", "must not be empty"),
            (1 <= self.max_requests <= 1024, "--web.max-requests", "must be 1 to 1024"),
            (
                self.request_timeout_seconds > 0,
                "--web.request-timeout",
                "must be positive",
            ),
            (bool(self.libvirt_uri.strip()), "--libvirt.uri", "must not be empty"),
            (
                self.source in tuple(SourceKind),
                "--source",
                f"must be one of {', '.join(SourceKind)}",
            ),
            (
                0 <= self.simulation.vms <= MAX_SIMULATED_VMS,
                "--simulated.vms",
                f"must be 0 to {MAX_SIMULATED_VMS}",
            ),
            (
                0 <= self.simulation.churn_per_minute <= MAX_SIMULATED_VMS,
                "--simulated.churn",
                f"must be 0 to {MAX_SIMULATED_VMS} VMs per minute",
            ),
            (
                0 <= self.simulation.agent_flaps_per_minute <= MAX_SIMULATED_VMS,
                "--simulated.agent-flaps",
                f"must be 0 to {MAX_SIMULATED_VMS} agents per minute",
            ),
            (
                0 <= self.simulation.agent_latency_seconds < self.agent_timeout_seconds,
                "--simulated.agent-latency",
                "must be at least 0 and shorter than --collector.agent-timeout "
                f"({format_duration(self.agent_timeout_seconds)})",
            ),
            (
                self.identity_mode in tuple(IdentityMode),
                "--identity.mode",
                f"must be one of {', '.join(IdentityMode)}",
            ),
            (bool(self.queries()), *self.query_options.nothing_asked()),
            (
                "{socket}" in self.socket_uri_template,
                "--libvirt.socket-uri-template",
                "must contain {socket}",
            ),
            (
                not self.socket_glob or self.socket_glob.startswith("/"),
                "--libvirt.socket-glob",
                "must be an absolute path pattern",
            ),
        ]
        for ok, flag, reason in checks:
            if not ok:
                raise SettingsError(f"{flag} {reason}")

    def queries(self) -> tuple[GuestQuery, ...]:
        """The guest-agent queries asked of every domain."""
        return self.query_options.queries()

    def host_stats(self) -> tuple[HostStat, ...]:
        """The host stats read from libvirt's bulk stats of every domain."""
        return self.host_stat_options.host_stats()
