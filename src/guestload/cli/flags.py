"""The command's flags and the :class:`~guestload.settings.Settings` they build."""

from __future__ import annotations

import argparse
from typing import NoReturn

from guestload import __version__
from guestload.identity import default_node
from guestload.logs import FORMATS, LEVELS
from guestload.settings import (
    DEFAULT_LIBVIRT_URI,
    DEFAULT_LISTEN_ADDRESS,
    DEFAULT_SOCKET_URI_TEMPLATE,
    IDENTITY_MODES,
    SOURCES,
    ListenAddress,
    Settings,
    parse_duration,
)
from guestload.sources.simulated import AgentFailures, Simulation

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """Bad flags: one line naming the flag, exit 2; no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"guestload: error: {message} (see '{self.prog} --help')\n")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _listen_address(text: str) -> ListenAddress:
    try:
        return ListenAddress.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _agent_failures(text: str) -> AgentFailures:
    try:
        return AgentFailures.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_simulated_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="libvirt",
        help="where VMs come from: libvirt, or simulated VMs for load tests, demos and "
        "dashboard work (default: %(default)s)",
    )
    parser.add_argument(
        "--simulated.vms",
        dest="simulated_vms",
        type=int,
        default=Simulation().vms,
        metavar="N",
        help="simulated VMs (default: %(default)s)",
    )
    parser.add_argument(
        "--simulated.seed",
        dest="simulated_seed",
        type=int,
        default=Simulation().seed,
        metavar="N",
        help="seed of the simulation: the same seed gives the same VMs and load curves "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--simulated.agent-failures",
        dest="simulated_agent_failures",
        type=_agent_failures,
        default=AgentFailures(),
        metavar="SHARES",
        help="shares of misbehaving agents, e.g. absent=2%%,old=3%%,slow=5%%,hung=10%% "
        "(default: none)",
    )
    parser.add_argument(
        "--simulated.churn",
        dest="simulated_churn",
        type=float,
        default=0.0,
        metavar="PER_MINUTE",
        help="simulated VMs replaced per minute, with their lifecycle and agent events "
        "(default: 0)",
    )
    parser.add_argument(
        "--simulated.agent-latency",
        dest="simulated_agent_latency",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="how long a healthy simulated agent takes to answer (default: 0s)",
    )
    parser.add_argument(
        "--simulated.agent-flaps",
        dest="simulated_agent_flaps",
        type=float,
        default=0.0,
        metavar="PER_MINUTE",
        help="simulated agents per minute that disconnect and reconnect 10 to 30 s later, "
        "with their agent events (default: 0)",
    )


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--libvirt.uri",
        dest="libvirt_uri",
        default=DEFAULT_LIBVIRT_URI,
        metavar="URI",
        help="libvirt connection URI; needs a read-write connection (default: %(default)s)",
    )
    _add_simulated_flags(parser)
    parser.add_argument(
        "--libvirt.socket-glob",
        dest="socket_glob",
        default="",
        metavar="PATTERN",
        help="connect to every libvirt socket matching this absolute glob, re-scanned as "
        "sockets come and go, instead of --libvirt.uri (KubeVirt: one daemon per VM pod)",
    )
    parser.add_argument(
        "--libvirt.socket-uri-template",
        dest="socket_uri_template",
        default=DEFAULT_SOCKET_URI_TEMPLATE,
        metavar="URI",
        help="libvirt URI for each socket found by --libvirt.socket-glob; {socket} is "
        "replaced by its path (default: %(default)s)",
    )
    parser.add_argument(
        "--collector.agent-timeout",
        dest="agent_timeout",
        type=_duration,
        default=5.0,
        metavar="DURATION",
        help="how long one guest-agent call may take (default: 5s)",
    )
    parser.add_argument(
        "--collector.concurrency",
        dest="concurrency",
        type=int,
        default=8,
        metavar="N",
        help="guest-agent calls in parallel (default: %(default)s)",
    )
    parser.add_argument(
        "--node",
        default=None,
        help="value of the node label (default: $NODE_NAME, else the host name)",
    )
    parser.add_argument(
        "--identity.default-namespace",
        dest="default_namespace",
        default="libvirt",
        metavar="NAMESPACE",
        help="namespace label for domains not created by KubeVirt (default: %(default)s)",
    )
    parser.add_argument(
        "--identity.mode",
        dest="identity_mode",
        choices=IDENTITY_MODES,
        default="auto",
        help="how VMs are named: KubeVirt or Nova (OpenStack) domain metadata, or the plain "
        "domain name; auto tries KubeVirt, then Nova, then plain (default: %(default)s)",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        choices=LEVELS,
        default=None,
        help="log level (default: info for serve, warn for probe)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        choices=FORMATS,
        default="logfmt",
        help="log line format on stderr (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    """``guestload`` with its ``serve`` and ``probe`` subcommands."""
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
    serve.add_argument(
        "--web.listen-address",
        dest="listen_address",
        type=_listen_address,
        default=ListenAddress.parse(DEFAULT_LISTEN_ADDRESS),
        metavar="HOST:PORT",
        help=f"address to serve on (default: {DEFAULT_LISTEN_ADDRESS})",
    )
    serve.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        metavar="PATH",
        help="path of the metrics endpoint (default: %(default)s)",
    )
    serve.add_argument(
        "--web.max-requests",
        dest="max_requests",
        type=int,
        default=16,
        metavar="N",
        help="concurrent HTTP requests; more get 503 (default: %(default)s)",
    )
    serve.add_argument(
        "--web.request-timeout",
        dest="request_timeout",
        type=_duration,
        default=10.0,
        metavar="DURATION",
        help="how long a client may take to send its request (default: 10s)",
    )
    serve.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default="",
        metavar="FILE",
        help="TLS, basic authentication and response headers, in the Prometheus exporters' web "
        "configuration format; re-read on SIGHUP and when it or its certificates change",
    )
    serve.add_argument(
        "--collector.interval",
        dest="interval",
        type=_duration,
        default=120.0,
        metavar="DURATION",
        help="time between polls (default: 120s)",
    )
    serve.add_argument(
        "--collector.agent-backoff-max",
        dest="backoff_max",
        type=_duration,
        default=900.0,
        metavar="DURATION",
        help="longest wait before re-asking an absent or too old agent (default: 15m)",
    )
    serve.add_argument(
        "--collector.guest-cpu",
        dest="guest_cpu",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask guest agents for CPU time by mode (guest-get-cpustats, through libvirt's "
        "agent passthrough, which marks each domain tainted once per run; default: on)",
    )
    serve.add_argument(
        "--collector.guest-cpu.per-cpu",
        dest="guest_cpu_per_cpu",
        action="store_true",
        help="export guest CPU time per guest CPU (a cpu label) instead of summed per VM",
    )
    serve.add_argument(
        "--collector.vcpu",
        dest="vcpu_collector",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export the kubevirt_vmi_vcpu_* counters (off where KubeVirt's virt-handler "
        "already exports them; default: on)",
    )
    _add_source_flags(serve)

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
    _add_source_flags(probe)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Validate the parsed flags as a whole; raises SettingsError naming the flag."""
    return Settings(
        libvirt_uri=args.libvirt_uri,
        listen_address=getattr(args, "listen_address", ListenAddress.parse(DEFAULT_LISTEN_ADDRESS)),
        telemetry_path=getattr(args, "telemetry_path", "/metrics"),
        poll_interval_seconds=getattr(args, "interval", 120.0),
        agent_timeout_seconds=args.agent_timeout,
        concurrency=args.concurrency,
        agent_backoff_max_seconds=getattr(args, "backoff_max", 900.0),
        vcpu_collector=getattr(args, "vcpu_collector", True),
        guest_cpu=getattr(args, "guest_cpu", True),
        guest_cpu_per_cpu=getattr(args, "guest_cpu_per_cpu", False),
        node=args.node if args.node is not None else default_node(),
        default_namespace=args.default_namespace,
        max_requests=getattr(args, "max_requests", 16),
        request_timeout_seconds=getattr(args, "request_timeout", 10.0),
        web_config_file=getattr(args, "web_config_file", ""),
        log_level=args.log_level or ("warn" if args.command == "probe" else "info"),
        log_format=args.log_format,
        source=args.source,
        simulation=Simulation(
            vms=args.simulated_vms,
            seed=args.simulated_seed,
            agent_failures=args.simulated_agent_failures,
            churn_per_minute=args.simulated_churn,
            agent_latency_seconds=args.simulated_agent_latency,
            agent_flaps_per_minute=args.simulated_agent_flaps,
        ),
        identity_mode=args.identity_mode,
        socket_glob=args.socket_glob,
        socket_uri_template=args.socket_uri_template,
    )
