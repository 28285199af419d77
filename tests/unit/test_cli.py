"""Flags: parsing, validation at start-up, and the one-line error that names the flag."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from guestload import __version__
from guestload.cli.flags import (
    HOST_STAT_DEST,
    PROBE_LOG_LEVEL,
    QUERY_DEST,
    build_parser,
    field_default,
    settings_from_args,
    shown_default,
)
from guestload.cli.main import main
from guestload.hoststats.catalog import HOST_STATS
from guestload.hoststats.registry import HostStatRegistry
from guestload.identity import IdentityMode
from guestload.queries.catalog import QUERIES
from guestload.queries.load import LoadOptions
from guestload.queries.registry import QueryRegistry
from guestload.settings import (
    DERIVED_FROM_INTERVAL,
    ListenAddress,
    Settings,
    SettingsError,
    SourceKind,
    format_duration,
    parse_duration,
)
from guestload.simulation import Simulation


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("2m", 120.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0), ("7", 7.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "10x", "1m 30s", "-", "5 s", "m5"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [(":9977", "", 9977), ("127.0.0.1:80", "127.0.0.1", 80), ("[::1]:9977", "::1", 9977)],
)
def test_listen_addresses(text: str, host: str, port: int) -> None:
    address = ListenAddress.parse(text)
    assert (address.host, address.port) == (host, port)
    assert str(address) == (text if host else f":{port}")


def test_defaults() -> None:
    args = build_parser().parse_args(["serve", "--node", "n1"])
    settings = settings_from_args(args)
    assert settings.libvirt_uri == "qemu:///system"
    assert settings.poll_interval_seconds == 120.0
    assert settings.listen_address == ListenAddress(host="", port=9977)
    assert settings.telemetry_path == "/metrics"
    assert settings.vcpu_collector
    assert settings.node == "n1"


def test_node_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "from-env")
    assert settings_from_args(build_parser().parse_args(["probe"])).node == "from-env"


def _flags(command: str) -> dict[str, argparse.Action]:
    """The flags of ``command`` by the field (dest) they set."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in subparsers.choices[command]._actions if a.dest != "help"}


_REGISTRIES: dict[str, QueryRegistry | HostStatRegistry] = {
    QUERY_DEST: QUERIES,
    HOST_STAT_DEST: HOST_STATS,
}
"""The head of a collector flag's destination -> the registry of its collectors."""


def _field_paths() -> set[str]:
    """Every Settings field, with the simulation's fields as ``simulation.<name>``, each
    registered query's options as ``query.<query>.<name>`` and each host stat's as
    ``host_stat.<host stat>.<name>``."""
    nested = ("simulation", "query_options", "host_stat_options")
    paths = {spec.name for spec in fields(Settings) if spec.name not in nested}
    paths |= {f"simulation.{spec.name}" for spec in fields(Simulation)}
    return paths | {
        f"{head}.{registration.name}.{spec.name}"
        for head, registry in _REGISTRIES.items()
        for registration in registry
        for spec in fields(registration.defaults)
    }


def _default(dest: str) -> object:
    """The default of the Settings field, or of the collector option, a flag sets."""
    head, _, rest = dest.partition(".")
    registry = _REGISTRIES.get(head)
    if registry is None:
        return field_default(dest)
    name, _, option = rest.partition(".")
    registration = registry.get(name)
    assert registration is not None, dest
    return registration.default(option)


def test_every_settings_field_has_a_serve_flag_and_every_flag_sets_a_field() -> None:
    assert set(_flags("serve")) == _field_paths()


def test_probe_has_the_source_flags_of_serve_and_its_output() -> None:
    serve, probe = _flags("serve"), _flags("probe")
    assert set(probe) - set(serve) == {"output"}
    assert {o for dest in probe for o in probe[dest].option_strings} - {
        o for dest in serve for o in serve[dest].option_strings
    } == {"--output"}


def _parser_default(dest: str) -> object:
    """What the parser should hold for a flag not given: None where the interval decides."""
    return None if dest in DERIVED_FROM_INTERVAL else _default(dest)


def test_flag_defaults_are_the_settings_defaults() -> None:
    for dest, action in _flags("serve").items():
        assert action.default == _parser_default(dest), dest
    for dest, action in _flags("probe").items():
        if dest not in ("output", "log_level"):
            assert action.default == _parser_default(dest), dest
    assert _flags("probe")["log_level"].default == PROBE_LOG_LEVEL != field_default("log_level")


def test_each_flag_help_shows_the_settings_default() -> None:
    for dest, action in _flags("serve").items():
        default = _default(dest)
        assert action.help is not None
        if dest == "node":
            assert "(default: $NODE_NAME, else the host name)" in action.help
        elif dest == "log_level":
            assert f"(default: {default} for serve, {PROBE_LOG_LEVEL} for probe)" in action.help
        elif default == "" or default is False:
            assert "default:" not in action.help, dest
        elif dest in DERIVED_FROM_INTERVAL:
            assert f"default: {shown_default(dest, default)}, or --collector.interval" in (
                action.help.replace("a quarter of ", "")
            ), dest
        else:
            assert f"default: {shown_default(dest, default)})" in action.help, dest


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.002, "2ms"),
        (5.0, "5s"),
        (120.0, "120s"),
        (590.0, "590s"),
        (630.0, "630s"),
        (900.0, "15m"),
        (7200.0, "2h"),
    ],
)
def test_durations_print_the_way_users_type_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_enum_flags_give_enum_members() -> None:
    args = build_parser().parse_args(
        ["probe", "--node", "n", "--source", "simulated", "--identity.mode", "openstack"]
    )
    settings = settings_from_args(args)
    assert settings.source is SourceKind.SIMULATED
    assert settings.identity_mode is IdentityMode.OPENSTACK
    assert settings.log_level == PROBE_LOG_LEVEL
    assert settings.poll_interval_seconds == field_default("poll_interval_seconds")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["serve", "--collector.interval", "0"], "--collector.interval"),
        (["serve", "--collector.interval", "soon"], "--collector.interval"),
        (["serve", "--collector.agent-timeout", "5m"], "--collector.agent-timeout"),
        (["serve", "--collector.concurrency", "0"], "--collector.concurrency"),
        (["serve", "--web.listen-address", "nope"], "--web.listen-address"),
        (["serve", "--web.listen-address", ":70000"], "--web.listen-address"),
        (["serve", "--web.telemetry-path", "metrics"], "--web.telemetry-path"),
        (["serve", "--log.level", "loud"], "--log.level"),
        (["serve", "--node", " "], "--node"),
        (["serve", "--no-such-flag"], "--no-such-flag"),
        (["probe", "--output", "xml"], "--output"),
        (["probe", "--identity.mode", "nova"], "--identity.mode"),
        (["probe", "--source", "qemu"], "--source"),
        (["serve", "--simulated.agent-latency", "fast"], "--simulated.agent-latency"),
        (
            ["serve", "--no-collector.load", "--no-collector.guest-cpu", "--no-collector.guest-os"],
            "--no-collector.load",
        ),
    ],
)
def test_bad_flags_exit_2_with_one_line_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("guestload: error: ")
    assert flag in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"guestload {__version__}"


def test_settings_reject_a_timeout_not_shorter_than_the_interval() -> None:
    with pytest.raises(SettingsError, match=r"--collector\.agent-timeout"):
        Settings(node="n", poll_interval_seconds=5.0, agent_timeout_seconds=5.0)


def test_derived_timings_at_the_default_interval_are_the_settings_defaults() -> None:
    interval = field_default("poll_interval_seconds")
    assert isinstance(interval, float)
    for dest, derive in DERIVED_FROM_INTERVAL.items():
        assert derive(interval) == field_default(dest), dest


@pytest.mark.parametrize(
    ("interval", "agent_timeout", "backoff_max"),
    [
        ("1s", 0.25, 900.0),
        ("5s", 1.25, 900.0),
        ("19s", 4.75, 900.0),
        ("20s", 5.0, 900.0),
        ("120s", 5.0, 900.0),
        ("1h", 5.0, 3600.0),
    ],
)
def test_timings_not_given_follow_the_interval(
    interval: str, agent_timeout: float, backoff_max: float
) -> None:
    args = build_parser().parse_args(["serve", "--node", "n", "--collector.interval", interval])
    settings = settings_from_args(args)
    assert settings.agent_timeout_seconds == agent_timeout
    assert settings.agent_backoff_max_seconds == backoff_max
    # The poll keeps half the interval even when a call asks both queries of a hung agent.
    assert 2 * settings.agent_timeout_seconds <= settings.poll_interval_seconds / 2


def test_given_timings_are_kept_as_given() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--node",
            "n",
            "--collector.interval",
            "5s",
            "--collector.agent-timeout",
            "4s",
            "--collector.agent-backoff-max",
            "5s",
        ]
    )
    settings = settings_from_args(args)
    assert (settings.agent_timeout_seconds, settings.agent_backoff_max_seconds) == (4.0, 5.0)


def test_probe_derives_the_agent_timeout_from_the_default_interval() -> None:
    settings = settings_from_args(build_parser().parse_args(["probe", "--node", "n"]))
    assert settings.agent_timeout_seconds == field_default("agent_timeout_seconds")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--collector.interval", "5s", "--collector.agent-timeout", "5s"],
            "--collector.agent-timeout must be at least 100ms and shorter than "
            "--collector.interval",
        ),
        (
            ["--collector.interval", "1h", "--collector.agent-backoff-max", "15m"],
            "--collector.agent-backoff-max must be at least --collector.interval",
        ),
        (
            ["--collector.interval", "5s", "--simulated.agent-latency", "2s"],
            "--simulated.agent-latency must be at least 0 and shorter than "
            "--collector.agent-timeout (1.25s)",
        ),
    ],
)
def test_given_timings_that_do_not_fit_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", *argv])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"guestload: error: {message}\n"


def test_no_load_collector_asks_agents_only_for_cpu_statistics_and_os() -> None:
    args = build_parser().parse_args(
        ["serve", "--node", "n1", "--no-collector.load", "--no-collector.vcpu"]
    )
    settings = settings_from_args(args)
    assert not settings.query_options.of(LoadOptions).enabled
    assert [query.name for query in settings.queries()] == ["cpustats", "osinfo"]
    assert [query.name for query in Settings(node="n").queries()] == [
        "load",
        "cpustats",
        "osinfo",
    ]
    without_os = settings_from_args(build_parser().parse_args(["serve", "--no-collector.guest-os"]))
    assert [query.name for query in without_os.queries()] == ["load", "cpustats"]
