"""Classification of libvirt errors and parsing of untrusted guest-agent answers."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestload.model import AgentState, QueryReading
from guestload.queries.load import (
    MAX_LOAD,
    MAX_PASSTHROUGH_REPLY_CHARS,
    GuestLoad,
    parse_agent_passthrough,
    parse_guest_info_load,
)
from guestload.sources.libvirt_errors import classify_libvirt_error
from tests.unit.fakes import load_value


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        pytest.param(
            86, "QEMU guest agent is not connected", AgentState.NOT_CONNECTED, id="86-not-connected"
        ),
        pytest.param(
            86,
            "QEMU guest agent is not available due to an error",
            AgentState.NOT_CONNECTED,
            id="86-not-available",
        ),
        pytest.param(
            86,
            "Guest agent is not responding: QEMU guest agent is not connected",
            AgentState.NOT_CONNECTED,
            id="86-prefixed-not-connected",
        ),
        pytest.param(
            86,
            "Guest agent is not responding: Guest agent didn't respond to synchronization "
            "within '5' seconds",
            AgentState.TIMEOUT,
            id="86-sync-timeout",
        ),
        pytest.param(
            113,
            "internal error: unable to execute QEMU agent command 'guest-get-load': "
            "The command guest-get-load has not been found",
            AgentState.UNSUPPORTED,
            id="113-not-found",
        ),
        pytest.param(
            113,
            "The command guest-get-load has been disabled for this instance",
            AgentState.UNSUPPORTED,
            id="113-disabled",
        ),
        pytest.param(
            113, "Guest agent command failed: Input/output error", AgentState.ERROR, id="113-other"
        ),
        pytest.param(
            74,
            "argument unsupported: QEMU guest agent is not configured",
            AgentState.NOT_CONFIGURED,
            id="74-no-channel",
        ),
        pytest.param(
            112,
            "Guest agent not responding: Guest agent didn't respond within 5 seconds",
            AgentState.TIMEOUT,
            id="112-command-timeout",
        ),
        pytest.param(
            55, "Requested operation is not valid: domain is not running", AgentState.GONE, id="55"
        ),
        pytest.param(
            42, "Domain not found: no domain with matching uuid", AgentState.GONE, id="42"
        ),
        pytest.param(
            68,
            "Timed out during operation: cannot acquire state change lock (held by agent=...)",
            AgentState.BUSY,
            id="68-lock",
        ),
        pytest.param(
            3,
            "this function is not supported by the connection driver: virDomainGetGuestInfo",
            AgentState.UNSUPPORTED,
            id="3-driver",
        ),
        pytest.param(1, "internal error: client socket is closed", AgentState.ERROR, id="1"),
        pytest.param(29, "operation forbidden: read only access", AgentState.ERROR, id="29"),
        pytest.param(-5, "", AgentState.ERROR, id="unknown-code"),
    ],
)
def test_classify_libvirt_error(code: int, message: str, expected: AgentState) -> None:
    assert classify_libvirt_error(code=code, message=message) is expected


def test_classification_covers_every_libvirt_state() -> None:
    """Every state but those parsing gives (ok, no_data, invalid) comes from some error."""
    samples = [
        (86, "not connected"),
        (86, "didn't respond to synchronization"),
        (113, "has not been found"),
        (74, ""),
        (112, ""),
        (42, ""),
        (68, ""),
        (0, ""),
    ]
    reached = {classify_libvirt_error(code=code, message=message) for code, message in samples}
    assert reached == set(AgentState) - {AgentState.OK, AgentState.NO_DATA, AgentState.INVALID}


def test_guest_info_load_ok() -> None:
    reading = parse_guest_info_load({"load.1m": 1.5, "load.5m": 0.75, "load.15m": 0.0})
    assert reading == QueryReading(
        state=AgentState.OK, value=GuestLoad(one=1.5, five=0.75, fifteen=0.0)
    )


def test_guest_info_load_accepts_ints_and_ignores_extra_keys() -> None:
    reading = parse_guest_info_load(
        {"load.1m": 2, "load.5m": 1, "load.15m": 0, "hostname": "x", "load.30m": "junk"}
    )
    assert reading.state is AgentState.OK
    assert reading.value == GuestLoad(one=2.0, five=1.0, fifteen=0.0)
    assert isinstance(load_value(reading).one, float)


def test_guest_info_without_load_keys_is_no_data_never_zero() -> None:
    for info in ({}, {"hostname": "guest"}):
        reading = parse_guest_info_load(info)
        assert reading.state is AgentState.NO_DATA
        assert reading.value is None


def test_guest_info_load_at_the_bound_is_accepted() -> None:
    reading = parse_guest_info_load({"load.1m": MAX_LOAD, "load.5m": 0, "load.15m": 0})
    assert reading.state is AgentState.OK


@pytest.mark.parametrize(
    ("value", "detail_part"),
    [
        pytest.param("1.5", "str, not a number", id="string"),
        pytest.param(True, "bool, not a number", id="bool"),
        pytest.param(None, "NoneType, not a number", id="none"),
        pytest.param([1.0], "list, not a number", id="list"),
        pytest.param(math.nan, "not finite", id="nan"),
        pytest.param(math.inf, "not finite", id="inf"),
        pytest.param(-math.inf, "not finite", id="minus-inf"),
        pytest.param(-0.01, "negative", id="negative"),
        pytest.param(MAX_LOAD * 2, "above", id="huge"),
        pytest.param(10**400, "out of range", id="int-beyond-float"),
    ],
)
def test_guest_info_hostile_value_is_invalid(value: object, detail_part: str) -> None:
    reading = parse_guest_info_load({"load.1m": 0.5, "load.5m": value, "load.15m": 0.5})
    assert reading.state is AgentState.INVALID
    assert reading.value is None
    assert "load.5m" in reading.detail
    assert detail_part in reading.detail


def test_guest_info_partial_keys_are_invalid() -> None:
    reading = parse_guest_info_load({"load.1m": 0.5, "load.15m": 0.5})
    assert reading.state is AgentState.INVALID
    assert "missing load.5m" in reading.detail


def test_guest_info_that_is_not_a_mapping_is_invalid() -> None:
    reading = parse_guest_info_load([("load.1m", 1)])
    assert reading.state is AgentState.INVALID


def test_detail_of_hostile_text_is_short_and_printable() -> None:
    reply = json.dumps({"error": {"class": "GenericError", "desc": "\x1b[31m" + "A" * 10_000}})
    reading = parse_agent_passthrough(reply)
    assert reading.state is AgentState.ERROR
    assert len(reading.detail) <= 150
    assert reading.detail.isprintable()


def test_passthrough_ok_with_integers() -> None:
    reading = parse_agent_passthrough('{"return":{"load15m":0,"load5m":0,"load1m":0}}')
    assert reading == QueryReading(
        state=AgentState.OK, value=GuestLoad(one=0.0, five=0.0, fifteen=0.0)
    )


def test_passthrough_ok_with_floats() -> None:
    reading = parse_agent_passthrough('{"return":{"load1m":3.25,"load5m":2.5,"load15m":1.0}}')
    assert reading.value == GuestLoad(one=3.25, five=2.5, fifteen=1.0)


def test_passthrough_empty_return_is_no_data() -> None:
    assert parse_agent_passthrough('{"return":{}}').state is AgentState.NO_DATA


@pytest.mark.parametrize(
    "desc",
    [
        "The command guest-get-load has not been found",
        "The command guest-get-load has been disabled for this instance",
    ],
)
def test_passthrough_command_not_found_is_unsupported(desc: str) -> None:
    reply = json.dumps({"error": {"class": "CommandNotFound", "desc": desc}})
    reading = parse_agent_passthrough(reply)
    assert reading.state is AgentState.UNSUPPORTED
    assert reading.detail == desc


def test_passthrough_other_agent_error_is_error() -> None:
    reply = '{"error":{"class":"GenericError","desc":"failed to open /proc/loadavg"}}'
    reading = parse_agent_passthrough(reply)
    assert reading.state is AgentState.ERROR
    assert "GenericError" in reading.detail


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param("", id="empty"),
        pytest.param("{", id="truncated"),
        pytest.param("null", id="null"),
        pytest.param("[1, 2, 3]", id="array"),
        pytest.param('"text"', id="string"),
        pytest.param('{"result": {}}', id="no-return"),
        pytest.param('{"return": [0, 0, 0]}', id="return-array"),
        pytest.param('{"error": "boom"}', id="error-string"),
        pytest.param('{"error": {"desc": "no class"}}', id="error-without-class"),
        pytest.param('{"return": {"load1m": NaN, "load5m": 0, "load15m": 0}}', id="nan"),
        pytest.param('{"return": {"load1m": 1e999, "load5m": 0, "load15m": 0}}', id="inf"),
        pytest.param('{"return": {"load1m": -1, "load5m": 0, "load15m": 0}}', id="negative"),
        pytest.param('{"return": {"load1m": "1", "load5m": 0, "load15m": 0}}', id="string-value"),
        pytest.param('{"return": {"load1m": 1, "load5m": 0}}', id="partial"),
        pytest.param(
            '{"return": {"load1m": ' + "9" * 5000 + ', "load5m": 0, "load15m": 0}}',
            id="int-too-long-to-parse",
        ),
        pytest.param("[" * 100_000 + "]" * 100_000, id="deep-nesting-oversized"),
        pytest.param("[" * 30_000 + "]" * 30_000, id="deep-nesting"),
    ],
)
def test_passthrough_malformed_reply_is_invalid(reply: str) -> None:
    reading = parse_agent_passthrough(reply)
    assert reading.state is AgentState.INVALID
    assert reading.value is None
    assert reading.detail


def test_passthrough_oversized_reply_is_invalid_before_parsing() -> None:
    padding = " " * MAX_PASSTHROUGH_REPLY_CHARS
    reading = parse_agent_passthrough('{"return":{"load1m":0,"load5m":0,"load15m":0}}' + padding)
    assert reading.state is AgentState.INVALID
    assert "exceeds" in reading.detail


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_load_keys = st.sampled_from(["load.1m", "load.5m", "load.15m", "load1m", "load5m", "load15m"])
_numbers = st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.booleans()
_mappings = st.dictionaries(_load_keys | st.text(max_size=10), _json_values, max_size=6)
_guest_info_loads = st.fixed_dictionaries(
    {"load.1m": _numbers, "load.5m": _numbers, "load.15m": _numbers}, optional={"x": _json_values}
)
_agent_loads = st.fixed_dictionaries(
    {"load1m": _numbers, "load5m": _numbers, "load15m": _numbers}, optional={"x": _json_values}
)


def _is_trustworthy(reading: QueryReading) -> bool:
    if reading.state is not AgentState.OK:
        return reading.value is None
    assert reading.value is not None
    values = (load_value(reading).one, load_value(reading).five, load_value(reading).fifteen)
    return all(
        type(value) is float and math.isfinite(value) and 0 <= value <= MAX_LOAD for value in values
    )


@settings(max_examples=50)
@given(_mappings | _guest_info_loads)
def test_any_guest_info_mapping_yields_a_trustworthy_reading(info: dict[str, object]) -> None:
    assert _is_trustworthy(parse_guest_info_load(info))


@settings(max_examples=50)
@given(
    st.one_of(
        st.text(max_size=200),
        _json_values.map(json.dumps),
        (_mappings | _agent_loads).map(lambda answer: json.dumps({"return": answer})),
        _mappings.map(lambda error: json.dumps({"error": error})),
    )
)
def test_any_passthrough_reply_yields_a_trustworthy_reading(reply: str) -> None:
    assert _is_trustworthy(parse_agent_passthrough(reply))
