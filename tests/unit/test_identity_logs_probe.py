"""Identity mapping, log formats and the probe's output."""

from __future__ import annotations

import grp
import io
import json
import logging
from pathlib import Path

import pytest

from guestload.cli.probe import print_probe
from guestload.identity import KUBEVIRT_UID_KEY, IdentityResolver
from guestload.logs import JsonFormatter, LogfmtFormatter
from guestload.model import AgentState, Identity, QueryReading
from guestload.sources.libvirt_advice import unreachable_advice
from tests.unit.fakes import FakeSource, domain, ok
from tests.unit.pollers import Clock, make_poller

RESOLVER = IdentityResolver(node="node-1", default_namespace="libvirt")
URI = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"


@pytest.mark.parametrize(
    ("name", "metadata", "expected"),
    [
        ("prod_web-1", {KUBEVIRT_UID_KEY: "u"}, Identity("prod", "web-1", "node-1")),
        ("prod_web_1", {KUBEVIRT_UID_KEY: "u"}, Identity("prod", "web_1", "node-1")),
        ("prod_web-1", {}, Identity("libvirt", "prod_web-1", "node-1")),
        ("plain", {KUBEVIRT_UID_KEY: "u"}, Identity("libvirt", "plain", "node-1")),
        ("_x", {KUBEVIRT_UID_KEY: "u"}, Identity("libvirt", "_x", "node-1")),
        ("instance-0001", {}, Identity("libvirt", "instance-0001", "node-1")),
    ],
)
def test_identity(name: str, metadata: dict[str, str], expected: Identity) -> None:
    assert RESOLVER.resolve(domain("u", name, metadata=metadata)) == expected


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("guestload.x", logging.WARNING, "f.py", 1, msg, None, None)
    record.__dict__.update(extra)
    return record


def test_logfmt_quotes_what_needs_quoting() -> None:
    line = LogfmtFormatter().format(_record('said "hi"', domain="a b", n=3))
    assert line.startswith("ts=")
    assert ' level=warn logger=guestload.x msg="said \\"hi\\"" domain="a b" n=3' in line
    assert "\n" not in LogfmtFormatter().format(_record("two\nlines"))


def test_logfmt_escapes_control_characters() -> None:
    """A request line or a guest's answer must not reach a terminal or a log file raw."""
    hostile = "GET /\x1b[2J\x00\r\x7f\x85\ttab HTTP/1.0"
    line = LogfmtFormatter().format(_record("http request", line=hostile))
    assert 'line="GET /\\x1b[2J\\x00\\r\\x7f\\x85\\ttab HTTP/1.0"' in line
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line), repr(line)
    assert LogfmtFormatter().format(_record("x", v="\x07")).endswith('v="\\x07"')


def test_json_logs_are_one_object_per_line() -> None:
    line = JsonFormatter().format(_record("hello", domain="d"))
    parsed = json.loads(line)
    assert parsed["msg"] == "hello"
    assert parsed["domain"] == "d"
    assert parsed["level"] == "warn"


def test_json_logs_escape_control_characters() -> None:
    """As in logfmt: no C0, DEL or C1 character reaches the line raw, and each reads back."""
    hostile = "GET /\x1b[2J\x00\r\x7f\x85\ttab HTTP/1.0"
    line = JsonFormatter().format(_record("http \x7frequest", line=hostile, **{"k\x7f": 1}))
    assert '"line": "GET /\\u001b[2J\\u0000\\r\\u007f\\u0085\\ttab HTTP/1.0"' in line
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line), repr(line)
    parsed = json.loads(line)
    assert parsed["line"] == hostile
    assert parsed["msg"] == "http \x7frequest"
    assert parsed["k\x7f"] == 1


def test_probe_prints_a_table_and_json() -> None:
    source = FakeSource(
        domains=[
            domain("a", "prod_web-1", vcpus=2, metadata={KUBEVIRT_UID_KEY: "u"}),
            domain("b", "old"),
        ],
        answers={"a": ok(2.5, 1.25, 0.5), "b": QueryReading(state=AgentState.UNSUPPORTED)},
    )
    out = io.StringIO()
    assert probe(source, output="table", stream=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "NAMESPACE",
        "NAME",
        "NODE",
        "DOMAIN",
        "VCPUS",
        "LOAD1",
        "LOAD5",
        "LOAD15",
        "AGENT",
    ]
    assert lines[1].split() == [
        "libvirt",
        "old",
        "node-1",
        "old",
        "1",
        "-",
        "-",
        "-",
        "unsupported",
    ]
    assert lines[2].split() == [
        "prod",
        "web-1",
        "node-1",
        "prod_web-1",
        "2",
        "2.50",
        "1.25",
        "0.50",
        "ok",
    ]
    out = io.StringIO()
    probe(source, output="json", stream=out)
    parsed = json.loads(out.getvalue())
    assert parsed["libvirt_up"] is True
    assert parsed["domains"][1]["load"] == {"1m": 2.5, "5m": 1.25, "15m": 0.5}


def test_probe_connects_once() -> None:
    """The reachability check's connection is the one the poll uses."""
    source = FakeSource(domains=[domain("a", "vm")], answers={"a": ok(1.0, 1.0, 1.0)})
    assert probe(source, output="json", stream=io.StringIO()) == 0
    assert source.connects == 1


def probe(source: FakeSource, *, output: str, stream: io.StringIO) -> int:
    errors = io.StringIO()
    answer = print_probe(
        make_poller(source, Clock(), []),
        advice=source.unreachable_advice,
        output=output,
        stream=stream,
        errors=errors,
    )
    assert errors.getvalue() == "" or answer == 1
    return answer


@pytest.mark.parametrize("output", ["table", "json"])
def test_probe_prints_only_the_error_and_the_sources_advice_when_unreachable(output: str) -> None:
    out, errors = io.StringIO(), io.StringIO()
    source = FakeSource(reachable=False)
    answer = print_probe(
        make_poller(source, Clock(), []),
        advice=source.unreachable_advice,
        output=output,
        stream=out,
        errors=errors,
    )
    assert answer == 1
    assert out.getvalue() == "", "no table: it would read as connected without VMs"
    assert (
        errors.getvalue() == "guestload: connection refused\ncheck the fake (connection refused)\n"
    )


def test_the_libvirt_advice_names_the_daemon_the_socket_and_the_group() -> None:
    lines = unreachable_advice(URI, "connection refused").splitlines()
    assert lines[0] == f"libvirt at {URI} is unreachable; check that:"
    assert "daemon runs" in lines[1]
    assert (
        lines[2] == "  - its socket exists: /nonexistent/libvirt-sock (no such file or directory)"
    )
    assert "member of its group" in lines[3]


def test_the_advice_names_the_socket_libvirt_named_with_its_group_and_mode(
    tmp_path: Path,
) -> None:
    socket_path = tmp_path / "libvirt-sock"
    socket_path.touch(mode=0o660)
    socket_path.chmod(0o660)
    group = grp.getgrgid(socket_path.stat().st_gid).gr_name
    error = (
        "cannot connect to libvirt uri=qemu:///system: "
        f"Failed to connect socket to '{socket_path}': Permission denied"
    )
    message = unreachable_advice("qemu:///system", error)
    assert f"  - its socket exists: {socket_path} (group {group}, mode 0660)\n" in message
    assert message.startswith("libvirt at qemu:///system is unreachable; check that:\n")
