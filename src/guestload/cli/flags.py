"""The command's flags and the :class:`~guestload.settings.Settings` they build.

Each flag is bound to the Settings field it sets (``simulation.vms`` for a field of a nested
dataclass): its default is that field's default, its choices come from the field's enum, its
parser from the field's type, and its help shows the default as users type it. The guest-agent
queries' and host stats' ``--collector.*`` flags come from their registrations
(:mod:`guestload.registration`) the same way, bound to a field of the collector's options
instead (``query.<name>.<field>``, ``host_stat.<name>.<field>``).
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any, Final, NoReturn, get_type_hints

from guestload import __version__
from guestload.hoststats.catalog import HOST_STATS
from guestload.hoststats.registry import HostStatRegistry, HostStatSelection
from guestload.identity import default_node
from guestload.logs import FORMATS, LEVELS
from guestload.queries.catalog import QUERIES
from guestload.queries.registry import QueryRegistry, QuerySelection
from guestload.registration import Registration
from guestload.settings import (
    DERIVED_FROM_INTERVAL,
    ListenAddress,
    Settings,
    format_duration,
    parse_duration,
)
from guestload.simulation import AgentFailures

EXIT_USAGE: Final = 2
PROBE_LOG_LEVEL: Final = "warn"
"""``probe`` prints its answer on stdout; only warnings and errors go to stderr."""


class _Parser(argparse.ArgumentParser):
    """Bad flags: one line naming the flag, exit 2; no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"guestload: error: {message} (see '{self.prog} --help')\n")


def _argument_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """``parse`` with its ValueError shown as argparse's one-line error."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _enum_member(kind: type[enum.StrEnum]) -> Callable[[str], object]:
    """The member named ``text``; other texts pass through for argparse's choices error."""
    return lambda text: kind(text) if text in tuple(kind) else text


_PARSERS: Final[dict[object, Callable[[str], object]]] = {
    int: int,
    float: float,
    ListenAddress: _argument_type(ListenAddress.parse),
    AgentFailures: _argument_type(AgentFailures.parse),
}


def _owner_and_name(path: str) -> tuple[type[Any], str]:
    """The dataclass that holds the field at ``path`` (``simulation.vms``), and its name."""
    owner: type[Any] = Settings
    *parents, name = path.split(".")
    for parent in parents:
        owner = get_type_hints(owner)[parent]
    return owner, name


def field_type(path: str) -> Any:
    """The declared type of the Settings field at ``path``."""
    owner, name = _owner_and_name(path)
    return get_type_hints(owner)[name]


def field_default(path: str) -> object:
    """The default of the Settings field at ``path``; None for a field without one."""
    owner, name = _owner_and_name(path)
    spec = next(f for f in fields(owner) if f.name == name)
    if spec.default is not MISSING:
        return spec.default
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return None


def is_duration(path: str) -> bool:
    """Fields in seconds are set with durations (``30s``, ``2m``)."""
    return path.endswith("_seconds")


def shown_default(path: str, value: object) -> str:
    """``value`` of the field at ``path`` as the help shows it.

    None for a field derived from the interval (a flag not given) shows its value at the
    default interval.
    """
    if value is None and path in DERIVED_FROM_INTERVAL:
        value = field_default(path)
    if is_duration(path) and isinstance(value, float):
        return format_duration(value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, AgentFailures) and value == AgentFailures():
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_UNSET: Final = object()
QUERY_DEST: Final = "query"
"""The head of a query flag's destination: ``query.<query name>.<options field>``."""
HOST_STAT_DEST: Final = "host_stat"
"""The head of a host stat flag's destination: ``host_stat.<host stat name>.<options field>``."""


def _flag(
    parser: argparse.ArgumentParser,
    name: str,
    path: str,
    help_text: str,
    *,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    default: object = _UNSET,
) -> None:
    """Add flag ``name`` setting field ``path``; ``%(default)s`` in the help shows the default."""
    value = field_default(path) if default is _UNSET else default
    _argument(
        parser,
        name,
        dest=path,
        kind=field_type(path),
        value=value,
        help_text=help_text,
        metavar=metavar,
        choices=choices,
    )


def _collector_flags(
    parser: argparse.ArgumentParser, registration: Registration, head: str
) -> None:
    """Add the flags of a registered collector, each setting a field of its options."""
    for flag in registration.flags:
        dest = f"{head}.{registration.name}.{flag.option}"
        kind = registration.option_type(flag.option)
        value = registration.default(flag.option)
        _argument(parser, flag.name, dest=dest, kind=kind, value=value, help_text=flag.help)


def _argument(
    parser: argparse.ArgumentParser,
    name: str,
    *,
    dest: str,
    kind: object,
    value: object,
    help_text: str,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
) -> None:
    """Add flag ``name`` of type ``kind`` and default ``value``, stored at ``dest``."""
    shown = shown_default(dest, value).replace("%", "%%")
    options: dict[str, Any] = {
        "dest": dest,
        "default": value,
        "help": help_text.replace("%(default)s", shown),
    }
    if kind is bool:
        # On by default: the flag's --no- form turns it off.
        options["action"] = argparse.BooleanOptionalAction if value else "store_true"
    elif isinstance(kind, type) and issubclass(kind, enum.StrEnum):
        options["choices"] = tuple(member.value for member in kind)
        options["type"] = _enum_member(kind)
    elif choices is not None:
        options["choices"] = choices
    else:
        options["type"] = (
            _argument_type(parse_duration) if is_duration(dest) else _PARSERS.get(kind)
        )
        if metavar is None and kind in (int, float):
            metavar = "DURATION" if is_duration(dest) else "N"
        options["metavar"] = metavar
    parser.add_argument(name, **options)


def _add_simulated_flags(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "--source",
        "source",
        "where VMs come from: libvirt, or simulated VMs for load tests, demos and "
        "dashboard work (default: %(default)s)",
    )
    _flag(parser, "--simulated.vms", "simulation.vms", "simulated VMs (default: %(default)s)")
    _flag(
        parser,
        "--simulated.seed",
        "simulation.seed",
        "seed of the simulation: the same seed gives the same VMs and load curves "
        "(default: %(default)s)",
    )
    _flag(
        parser,
        "--simulated.agent-failures",
        "simulation.agent_failures",
        "shares of misbehaving agents, e.g. absent=2%%,old=3%%,slow=5%%,hung=10%% "
        "(default: %(default)s)",
        metavar="SHARES",
    )
    _flag(
        parser,
        "--simulated.churn",
        "simulation.churn_per_minute",
        "simulated VMs replaced per minute, with their lifecycle and agent events "
        "(default: %(default)s)",
        metavar="PER_MINUTE",
    )
    _flag(
        parser,
        "--simulated.agent-latency",
        "simulation.agent_latency_seconds",
        "how long a healthy simulated agent takes to answer (default: %(default)s)",
    )
    _flag(
        parser,
        "--simulated.agent-flaps",
        "simulation.agent_flaps_per_minute",
        "simulated agents per minute that disconnect and reconnect 10 to 30 s later, "
        "with their agent events (default: %(default)s)",
        metavar="PER_MINUTE",
    )


def _add_source_flags(parser: argparse.ArgumentParser, *, log_level: str) -> None:
    _flag(
        parser,
        "--libvirt.uri",
        "libvirt_uri",
        "libvirt connection URI; needs a read-write connection (default: %(default)s)",
        metavar="URI",
    )
    _add_simulated_flags(parser)
    _flag(
        parser,
        "--libvirt.socket-glob",
        "socket_glob",
        "connect to every libvirt socket matching this absolute glob, re-scanned as "
        "sockets come and go, instead of --libvirt.uri (KubeVirt: one daemon per VM pod)",
        metavar="PATTERN",
    )
    _flag(
        parser,
        "--libvirt.socket-uri-template",
        "socket_uri_template",
        "libvirt URI for each socket found by --libvirt.socket-glob; {socket} is "
        "replaced by its path (default: %(default)s)",
        metavar="URI",
    )
    _flag(
        parser,
        "--collector.agent-timeout",
        "agent_timeout_seconds",
        "how long one guest-agent call may take; must be shorter than --collector.interval "
        "(default: %(default)s, or a quarter of --collector.interval when that is shorter)",
        default=None,
    )
    _flag(
        parser,
        "--collector.concurrency",
        "concurrency",
        "guest-agent calls in parallel (default: %(default)s)",
    )
    _flag(
        parser,
        "--node",
        "node",
        "value of the node label (default: $NODE_NAME, else the host name)",
        metavar="NODE",
    )
    _flag(
        parser,
        "--identity.default-namespace",
        "default_namespace",
        "namespace label for domains not created by KubeVirt (default: %(default)s)",
        metavar="NAMESPACE",
    )
    _flag(
        parser,
        "--identity.mode",
        "identity_mode",
        "how VMs are named: KubeVirt or Nova (OpenStack) domain metadata, or the plain "
        "domain name; auto tries KubeVirt, then Nova, then plain (default: %(default)s)",
    )
    _flag(
        parser,
        "--log.level",
        "log_level",
        f"log level (default: {field_default('log_level')} for serve, {PROBE_LOG_LEVEL} for probe)",
        choices=LEVELS,
        default=log_level,
    )
    _flag(
        parser,
        "--log.format",
        "log_format",
        "log line format on stderr (default: %(default)s)",
        choices=FORMATS,
    )


def build_parser(
    queries: QueryRegistry = QUERIES, host_stats: HostStatRegistry = HOST_STATS
) -> argparse.ArgumentParser:
    """``guestload`` with its ``serve``, ``probe`` and ``bundle`` subcommands; ``serve`` has
    the flags of every query in ``queries`` and every host stat in ``host_stats``."""
    parser = _Parser(
        prog="guestload",
        description="Exports each libvirt VM's guest load average and CPU time by mode, read "
        "through the QEMU guest agent, as Prometheus metrics.",
    )
    parser.add_argument("--version", action="version", version=f"guestload {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the exporter", description="Poll libvirt and serve /metrics."
    )
    _flag(
        serve,
        "--web.listen-address",
        "listen_address",
        "address to serve on (default: %(default)s)",
        metavar="HOST:PORT",
    )
    _flag(
        serve,
        "--web.telemetry-path",
        "telemetry_path",
        "path of the metrics endpoint (default: %(default)s)",
        metavar="PATH",
    )
    _flag(
        serve,
        "--web.max-requests",
        "max_requests",
        "requests answered at once; a complete request finding none free waits up to 1s, then"
        " gets 503 (default: %(default)s)",
    )
    _flag(
        serve,
        "--web.request-timeout",
        "request_timeout_seconds",
        "how long a client may take to send its request (default: %(default)s)",
    )
    _flag(
        serve,
        "--web.config.file",
        "web_config_file",
        "TLS, basic authentication and response headers, in the Prometheus exporters' web "
        "configuration format; re-read on SIGHUP and when it or its certificates change",
        metavar="FILE",
    )
    _flag(
        serve,
        "--collector.interval",
        "poll_interval_seconds",
        "time between polls (default: %(default)s)",
    )
    _flag(
        serve,
        "--collector.agent-backoff-max",
        "agent_backoff_max_seconds",
        "longest wait before re-asking an absent or too old agent; at least "
        "--collector.interval (default: %(default)s, or --collector.interval when longer)",
        default=None,
    )
    for query in queries:
        _collector_flags(serve, query, QUERY_DEST)
    _flag(
        serve,
        "--collector.vcpu",
        "vcpu_collector",
        "export the kubevirt_vmi_vcpu_* counters (off where KubeVirt's virt-handler "
        "already exports them; default: %(default)s)",
    )
    for host_stat in host_stats:
        _collector_flags(serve, host_stat, HOST_STAT_DEST)
    _add_source_flags(serve, log_level=str(field_default("log_level")))

    probe = commands.add_parser(
        "probe",
        help="poll once and print every domain",
        description="Poll libvirt once and print each running domain's identity, vCPUs, "
        "load and agent state.",
    )
    probe.add_argument(
        "--output",
        choices=("table", "json"),
        default="table",
        help="a table for people or JSON for programs (default: %(default)s)",
    )
    _add_source_flags(probe, log_level=PROBE_LOG_LEVEL)

    bundle = commands.add_parser(
        "bundle",
        help="write out the monitoring bundle of this version",
        description="Write the recording rules and alerts (with their promtool tests), the "
        "PrometheusRule, the Grafana dashboard, the runbooks and the systemd unit of this "
        "version into a folder.",
    )
    bundle.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="folder to write into (created if missing; files of the same names are replaced)",
    )
    return parser


def _given(args: argparse.Namespace, head: str) -> dict[str, dict[str, object]]:
    """Collector name -> option -> value, for the flags in ``args`` whose destination is
    ``<head>.<name>.<option>``."""
    given: dict[str, dict[str, object]] = {}
    for dest, value in vars(args).items():
        dest_head, _, rest = dest.partition(".")
        if dest_head == head:
            name, _, option = rest.partition(".")
            given.setdefault(name, {})[option] = value
    return given


def query_options_from_args(
    args: argparse.Namespace, queries: QueryRegistry = QUERIES
) -> QuerySelection:
    """Every query's options: its defaults, with the values of its flags in ``args``."""
    return queries.selection(_given(args, QUERY_DEST))


def host_stat_options_from_args(
    args: argparse.Namespace, host_stats: HostStatRegistry = HOST_STATS
) -> HostStatSelection:
    """Every host stat's options: its defaults, with the values of its flags in ``args``."""
    return host_stats.selection(_given(args, HOST_STAT_DEST))


def settings_from_args(
    args: argparse.Namespace,
    queries: QueryRegistry = QUERIES,
    host_stats: HostStatRegistry = HOST_STATS,
) -> Settings:
    """Settings from the parsed flags; raises SettingsError naming the flag.

    Fields without a flag in the subcommand keep their defaults; ``--node`` left out means
    ``$NODE_NAME``, else the host name; timings left out that follow the interval
    (:data:`~guestload.settings.DERIVED_FROM_INTERVAL`) are derived from it. Each query in
    ``queries`` and each host stat in ``host_stats`` gets its options from its own flags.
    """
    names = {spec.name for spec in fields(Settings)}
    values: dict[str, Any] = {
        "query_options": query_options_from_args(args, queries),
        "host_stat_options": host_stat_options_from_args(args, host_stats),
    }
    nested: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        head, dot, tail = dest.partition(".")
        if head not in names:
            continue
        if dot:
            nested.setdefault(head, {})[tail] = value
        else:
            values[head] = value
    for head, given in nested.items():
        values[head] = field_type(head)(**given)
    if values.get("node") is None:
        values["node"] = default_node()
    interval = values.get("poll_interval_seconds", field_default("poll_interval_seconds"))
    for path, derive in DERIVED_FROM_INTERVAL.items():
        if values.get(path) is None and isinstance(interval, float):
            values[path] = derive(interval)
    return Settings(**values)
