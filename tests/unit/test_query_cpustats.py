"""Guest CPU time by mode from ``guest-get-cpustats``: parsing, accumulation and samples."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestload.metricspec import VM_LABELS, MetricType
from guestload.model import AgentState, QueryReading
from guestload.queries.cpustats import (
    GUEST_CPU_LAST_POLL,
    GUEST_CPU_SECONDS,
    GUEST_CPU_SECONDS_PER_CPU,
    MAX_GUEST_CPUS,
    MAX_MILLISECONDS,
    MAX_REPLY_CHARS,
    MODES,
    CpuMilliseconds,
    CpuStatsQuery,
    GuestCpuTimes,
    accumulate,
    parse_cpustats_reply,
)
from guestload.sources.libvirt_errors import VIR_ERR_AGENT_COMMAND_FAILED, classify_libvirt_error

REAL_REPLY = (
    '{"return":[{"cpu":0,"type":"linux","user":200,"system":1840,"idle":0,"iowait":87520,'
    '"steal":0,"nice":0,"irq":0,"softirq":10,"guest":0,"guestnice":0}]}'
)
"""A qemu-ga 10.0 answer from a one-CPU Linux guest (counters in milliseconds)."""

REAL_CPU0 = {
    "user": 200,
    "nice": 0,
    "system": 1840,
    "idle": 0,
    "iowait": 87520,
    "irq": 0,
    "softirq": 10,
    "steal": 0,
}

SUMMED = CpuStatsQuery()
PER_CPU = CpuStatsQuery(per_cpu=True)


def linux_cpu(cpu: object, **modes: object) -> dict[str, object]:
    """One Linux entry of a ``guest-get-cpustats`` answer."""
    return {"cpu": cpu, "type": "linux", **modes}


def reply(*entries: object) -> str:
    """The agent's raw reply carrying ``entries`` as its ``return`` list."""
    return json.dumps({"return": list(entries)})


def ok_value(raw: str) -> CpuMilliseconds:
    """The value of a reply that must parse to ``ok``."""
    reading = parse_cpustats_reply(raw)
    assert reading.state is AgentState.OK, reading.detail
    assert reading.detail == ""
    assert isinstance(reading.value, Mapping)
    return reading.value


def summed(value: object) -> dict[str, float]:
    """The summed samples of a kept value: mode -> seconds, checking their family and labels."""
    result: dict[str, float] = {}
    for family, labels, seconds in SUMMED.samples(value):
        if family is GUEST_CPU_LAST_POLL:
            continue
        assert family is GUEST_CPU_SECONDS
        assert len(labels) == 1
        (mode,) = labels
        assert mode not in result
        result[mode] = seconds
    return result


def per_cpu(value: object) -> dict[tuple[str, str], float]:
    """The per-CPU samples of a kept value in their order: (cpu, mode) -> seconds."""
    result: dict[tuple[str, str], float] = {}
    for family, labels, seconds in PER_CPU.samples(value):
        if family is GUEST_CPU_LAST_POLL:
            continue
        assert family is GUEST_CPU_SECONDS_PER_CPU
        assert len(labels) == 2
        cpu, mode = labels
        assert (cpu, mode) not in result
        result[cpu, mode] = seconds
    return result


def fold_all(query: CpuStatsQuery, answers: Sequence[CpuMilliseconds]) -> object:
    """The value kept after folding ``answers`` one after the other, starting from nothing."""
    kept: object = None
    for answer in answers:
        kept = query.fold(kept, answer)
    return kept


# --- The query's description -------------------------------------------------------------


def test_the_query_asks_the_agent_command_and_has_no_typed_answer() -> None:
    assert SUMMED.name == "cpustats"
    assert SUMMED.agent_command == "guest-get-cpustats"
    assert SUMMED.typed_info is None
    with pytest.raises(NotImplementedError, match="cpustats"):
        SUMMED.parse_typed_info({})


def test_the_summed_query_feeds_the_summed_family_and_the_per_cpu_query_the_per_cpu_one() -> None:
    assert SUMMED.families == (GUEST_CPU_SECONDS, GUEST_CPU_LAST_POLL)
    assert PER_CPU.families == (GUEST_CPU_SECONDS_PER_CPU, GUEST_CPU_LAST_POLL)
    assert CpuStatsQuery(per_cpu=False).families == (GUEST_CPU_SECONDS, GUEST_CPU_LAST_POLL)


def test_both_families_are_one_counter_that_differs_only_by_the_cpu_label() -> None:
    assert GUEST_CPU_SECONDS.name == GUEST_CPU_SECONDS_PER_CPU.name == "guestload_guest_cpu_seconds"
    assert GUEST_CPU_SECONDS.type is MetricType.COUNTER
    assert GUEST_CPU_SECONDS_PER_CPU.type is MetricType.COUNTER
    assert GUEST_CPU_SECONDS.labels == (*VM_LABELS, "mode")
    assert GUEST_CPU_SECONDS_PER_CPU.labels == (*VM_LABELS, "cpu", "mode")


def test_the_exported_modes_are_linux_proc_stat_modes_without_guest_time() -> None:
    assert MODES == ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


# --- Parsing valid answers -----------------------------------------------------------------


def test_a_real_qemu_ga_reply_parses_to_the_cpus_milliseconds_without_guest_time() -> None:
    assert ok_value(REAL_REPLY) == {0: REAL_CPU0}


def test_a_real_reply_exports_each_mode_in_seconds() -> None:
    kept = SUMMED.fold(None, ok_value(REAL_REPLY))
    assert summed(kept) == pytest.approx(
        {
            "user": 0.2,
            "nice": 0.0,
            "system": 1.84,
            "idle": 0.0,
            "iowait": 87.52,
            "irq": 0.0,
            "softirq": 0.01,
            "steal": 0.0,
        }
    )
    assert list(summed(kept)) == list(MODES)


def test_summed_samples_add_every_cpu_per_mode_in_seconds() -> None:
    raw = reply(
        linux_cpu(0, user=1500, system=250, idle=10_000, steal=5),
        linux_cpu(1, user=500, system=750, idle=30_000, steal=15),
    )
    kept = SUMMED.fold(None, ok_value(raw))
    assert summed(kept) == pytest.approx({"user": 2.0, "system": 1.0, "idle": 40.0, "steal": 0.02})


def test_only_modes_some_cpu_reports_are_exported() -> None:
    raw = reply(linux_cpu(0, user=1000), linux_cpu(1, iowait=2000))
    kept = SUMMED.fold(None, ok_value(raw))
    assert summed(kept) == pytest.approx({"user": 1.0, "iowait": 2.0})
    assert list(summed(kept)) == ["user", "iowait"]


def test_per_cpu_samples_carry_cpu_and_mode_in_numeric_cpu_then_proc_stat_order() -> None:
    raw = reply(linux_cpu(10, idle=4000, user=3000), linux_cpu(2, idle=2000, user=1000))
    kept = PER_CPU.fold(None, ok_value(raw))
    samples = per_cpu(kept)
    assert list(samples) == [("2", "user"), ("2", "idle"), ("10", "user"), ("10", "idle")]
    assert list(samples.values()) == pytest.approx([1.0, 2.0, 3.0, 4.0])
    folded = PER_CPU.fold(None, {5: {"steal": 1, "idle": 2, "user": 3}})
    assert list(per_cpu(folded)) == [("5", "user"), ("5", "idle"), ("5", "steal")]


def test_per_cpu_sample_labels_match_the_per_cpu_family_after_the_vm_labels() -> None:
    kept = PER_CPU.fold(None, ok_value(REAL_REPLY))
    extra_labels = GUEST_CPU_SECONDS_PER_CPU.labels[len(VM_LABELS) :]
    samples = list(PER_CPU.samples(kept))
    assert len(samples) == len(MODES)
    for _, labels, _ in samples:
        assert len(labels) == len(extra_labels)


def test_the_summed_query_never_uses_the_per_cpu_family_and_vice_versa() -> None:
    kept = SUMMED.fold(None, ok_value(REAL_REPLY))
    assert {family for family, _, _ in SUMMED.samples(kept)} == {GUEST_CPU_SECONDS}
    assert {family for family, _, _ in PER_CPU.samples(kept)} == {GUEST_CPU_SECONDS_PER_CPU}


def test_non_linux_entries_are_skipped_and_linux_ones_kept() -> None:
    raw = reply(
        {"cpu": 0, "type": "windows", "user": 999_999},
        linux_cpu(1, user=100),
        {"cpu": 2, "user": 5},
        {"cpu": "bogus", "type": "bsd", "user": "bogus"},
    )
    assert ok_value(raw) == {1: {"user": 100}}


def test_an_answer_with_only_non_linux_entries_is_no_data() -> None:
    raw = reply({"cpu": 0, "type": "windows", "user": 1}, {"cpu": 1, "type": "other"})
    reading = parse_cpustats_reply(raw)
    assert reading == QueryReading(
        state=AgentState.NO_DATA, detail="agent answered without Linux CPUs"
    )


def test_an_empty_cpu_list_is_no_data() -> None:
    assert parse_cpustats_reply(reply()).state is AgentState.NO_DATA


def test_a_linux_entry_without_modes_is_a_cpu_with_no_counters() -> None:
    assert ok_value(reply(linux_cpu(3))) == {3: {}}


def test_fractional_milliseconds_are_truncated_to_whole_milliseconds() -> None:
    assert ok_value(reply(linux_cpu(0, user=1.9))) == {0: {"user": 1}}


def test_the_largest_cpu_number_and_counter_are_accepted() -> None:
    raw = reply(linux_cpu(MAX_GUEST_CPUS - 1, user=MAX_MILLISECONDS))
    assert ok_value(raw) == {MAX_GUEST_CPUS - 1: {"user": MAX_MILLISECONDS}}


def test_exactly_the_maximum_number_of_cpus_is_accepted() -> None:
    raw = reply(*(linux_cpu(cpu, user=cpu) for cpu in range(MAX_GUEST_CPUS)))
    assert len(raw) <= MAX_REPLY_CHARS
    value = ok_value(raw)
    assert len(value) == MAX_GUEST_CPUS
    assert value[MAX_GUEST_CPUS - 1] == {"user": MAX_GUEST_CPUS - 1}


def test_a_reply_of_exactly_the_maximum_length_is_parsed() -> None:
    raw = reply(linux_cpu(0, user=1))
    padded = raw + " " * (MAX_REPLY_CHARS - len(raw))
    assert len(padded) == MAX_REPLY_CHARS
    assert ok_value(padded) == {0: {"user": 1}}


# --- Invalid answers -------------------------------------------------------------------------


def _nan_reply() -> str:
    raw = json.dumps({"return": [linux_cpu(0, user=float("nan"))]})
    assert "NaN" in raw
    return raw


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        pytest.param("{not json", "reply is not valid JSON", id="not-json"),
        pytest.param("", "reply is not valid JSON", id="empty-text"),
        pytest.param("[" * 100_000, "reply is not valid JSON", id="nesting-too-deep"),
        pytest.param(
            '{"return":[{"cpu":0,"type":"linux","user":' + "9" * 5000 + "}]}",
            "reply is not valid JSON",
            id="integer-with-too-many-digits",
        ),
        pytest.param("[]", "reply is a JSON list, not an object", id="json-list-at-top"),
        pytest.param('"text"', "reply is a JSON str, not an object", id="json-string-at-top"),
        pytest.param("{}", "reply has no 'return' list", id="no-return"),
        pytest.param('{"return":null}', "reply has no 'return' list", id="return-null"),
        pytest.param(
            '{"return":{"cpu":0,"type":"linux"}}', "reply has no 'return' list", id="return-object"
        ),
        pytest.param('{"return":"0"}', "reply has no 'return' list", id="return-string"),
        pytest.param(
            reply(*([{}] * (MAX_GUEST_CPUS + 1))),
            f"{MAX_GUEST_CPUS + 1} CPUs exceed {MAX_GUEST_CPUS}",
            id="too-many-cpus",
        ),
        pytest.param(reply(1), "a CPU entry is a int, not an object", id="entry-int"),
        pytest.param(reply([0]), "a CPU entry is a list, not an object", id="entry-list"),
        pytest.param(reply(None), "a CPU entry is a NoneType, not an object", id="entry-null"),
        pytest.param(
            reply(linux_cpu(0, user=1), "cpu1"),
            "a CPU entry is a str, not an object",
            id="entry-string-after-a-good-one",
        ),
        pytest.param(
            reply({"type": "linux", "user": 1}), "cpu None is not a CPU number", id="cpu-missing"
        ),
        pytest.param(reply(linux_cpu(None)), "cpu None is not a CPU number", id="cpu-null"),
        pytest.param(reply(linux_cpu(-1)), "cpu -1 is not a CPU number", id="cpu-negative"),
        pytest.param(reply(linux_cpu(True)), "cpu True is not a CPU number", id="cpu-true"),
        pytest.param(reply(linux_cpu(False)), "cpu False is not a CPU number", id="cpu-false"),
        pytest.param(reply(linux_cpu(0.0)), "cpu 0.0 is not a CPU number", id="cpu-float"),
        pytest.param(reply(linux_cpu(1.5)), "cpu 1.5 is not a CPU number", id="cpu-fraction"),
        pytest.param(reply(linux_cpu("0")), "cpu 0 is not a CPU number", id="cpu-string"),
        pytest.param(
            reply(linux_cpu(MAX_GUEST_CPUS)),
            f"cpu {MAX_GUEST_CPUS} is not a CPU number",
            id="cpu-too-large",
        ),
        pytest.param(reply(linux_cpu(2**64)), f"cpu {2**64} is not a CPU number", id="cpu-huge"),
        pytest.param(
            reply(linux_cpu(0, user=1), linux_cpu(1, user=2), linux_cpu(0, user=3)),
            "cpu 0 is reported twice",
            id="duplicate-cpu",
        ),
        pytest.param(
            reply(linux_cpu(0, user="200")),
            "cpu 0 user is a str, not a number",
            id="mode-string",
        ),
        pytest.param(
            reply(linux_cpu(0, system=True)),
            "cpu 0 system is a bool, not a number",
            id="mode-bool",
        ),
        pytest.param(
            reply(linux_cpu(0, idle=None)),
            "cpu 0 idle is a NoneType, not a number",
            id="mode-null",
        ),
        pytest.param(
            reply(linux_cpu(0, iowait=[1])),
            "cpu 0 iowait is a list, not a number",
            id="mode-list",
        ),
        pytest.param(
            reply(linux_cpu(0, steal=-1)), "cpu 0 steal is negative (-1)", id="mode-negative"
        ),
        pytest.param(
            reply(linux_cpu(0, steal=-0.5)),
            "cpu 0 steal is negative (-0.5)",
            id="mode-negative-fraction",
        ),
        pytest.param(_nan_reply(), "cpu 0 user is not finite (nan)", id="mode-nan"),
        pytest.param(
            '{"return":[{"cpu":0,"type":"linux","irq":Infinity}]}',
            "cpu 0 irq is not finite (inf)",
            id="mode-infinity",
        ),
        pytest.param(
            '{"return":[{"cpu":0,"type":"linux","irq":-Infinity}]}',
            "cpu 0 irq is not finite (-inf)",
            id="mode-minus-infinity",
        ),
        pytest.param(
            '{"return":[{"cpu":0,"type":"linux","nice":1e400}]}',
            "cpu 0 nice is not finite (inf)",
            id="mode-float-overflowing-to-infinity",
        ),
        pytest.param(
            reply(linux_cpu(0, softirq=MAX_MILLISECONDS + 1)),
            f"cpu 0 softirq is above {MAX_MILLISECONDS} ({MAX_MILLISECONDS + 1})",
            id="mode-above-max",
        ),
        pytest.param(
            reply(linux_cpu(0, softirq=1e19)),
            f"cpu 0 softirq is above {MAX_MILLISECONDS} (1e+19)",
            id="mode-float-above-max",
        ),
        pytest.param(
            reply(linux_cpu(0, user=1), linux_cpu(1, user=1, system="x")),
            "cpu 1 system is a str, not a number",
            id="bad-mode-on-a-later-cpu",
        ),
    ],
)
def test_a_malformed_answer_is_invalid_with_a_precise_detail(raw: str, detail: str) -> None:
    reading = parse_cpustats_reply(raw)
    assert reading == QueryReading(state=AgentState.INVALID, detail=detail)


def test_a_reply_longer_than_the_maximum_is_invalid_before_parsing() -> None:
    raw = reply(linux_cpu(0, user=1))
    padded = raw + " " * (MAX_REPLY_CHARS + 1 - len(raw))
    reading = parse_cpustats_reply(padded)
    assert reading == QueryReading(
        state=AgentState.INVALID,
        detail=f"reply of {MAX_REPLY_CHARS + 1} characters exceeds {MAX_REPLY_CHARS}",
    )


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        pytest.param(REAL_REPLY.encode(), "reply is a bytes, not text", id="bytes"),
        pytest.param(None, "reply is a NoneType, not text", id="none"),
        pytest.param({"return": []}, "reply is a dict, not text", id="already-decoded"),
    ],
)
def test_a_reply_that_is_not_text_is_invalid(raw: object, detail: str) -> None:
    assert parse_cpustats_reply(raw) == QueryReading(state=AgentState.INVALID, detail=detail)


def test_the_query_parses_agent_replies_like_the_module_function() -> None:
    assert SUMMED.parse_agent_reply(REAL_REPLY) == parse_cpustats_reply(REAL_REPLY)
    assert PER_CPU.parse_agent_reply("[]") == parse_cpustats_reply("[]")


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5)
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["cpu", "type", *MODES, "x"]), children, max_size=6)
    ),
    max_leaves=20,
)
_entries = st.fixed_dictionaries(
    {"cpu": _json_values, "type": st.sampled_from(["linux", "windows"]) | _json_scalars},
    optional={mode: _json_values for mode in MODES},
)


@settings(max_examples=80, deadline=None, database=None)
@given(entries=st.lists(_entries | _json_values, max_size=5))
def test_any_json_answer_is_judged_without_raising(entries: list[object]) -> None:
    reading = parse_cpustats_reply(reply(*entries))
    assert reading.state in {AgentState.OK, AgentState.NO_DATA, AgentState.INVALID}
    if reading.state is AgentState.OK:
        assert isinstance(reading.value, Mapping)
        for cpu, modes in reading.value.items():
            assert isinstance(cpu, int)
            assert 0 <= cpu < MAX_GUEST_CPUS
            assert set(modes) <= set(MODES)
            assert all(type(ms) is int and 0 <= ms <= MAX_MILLISECONDS for ms in modes.values())


# --- Agent errors ------------------------------------------------------------------------------


def _error_reply(error_class: str, description: str) -> str:
    return json.dumps({"error": {"class": error_class, "desc": description}})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            _error_reply("CommandNotFound", "The command guest-get-cpustats has not been found"),
            QueryReading(
                state=AgentState.UNSUPPORTED,
                detail="The command guest-get-cpustats has not been found",
            ),
            id="command-not-found",
        ),
        pytest.param(
            _error_reply("GenericError", "this feature or command is not currently supported"),
            QueryReading(
                state=AgentState.UNSUPPORTED,
                detail="this feature or command is not currently supported",
            ),
            id="generic-error-not-supported",
        ),
        pytest.param(
            _error_reply("GenericError", "This feature or command is NOT CURRENTLY SUPPORTED"),
            QueryReading(
                state=AgentState.UNSUPPORTED,
                detail="This feature or command is NOT CURRENTLY SUPPORTED",
            ),
            id="generic-error-not-supported-any-case",
        ),
        pytest.param(
            _error_reply("GenericError", 'open("/proc/stat"): No such file or directory'),
            QueryReading(
                state=AgentState.ERROR,
                detail='GenericError: open("/proc/stat"): No such file or directory',
            ),
            id="other-generic-error",
        ),
        pytest.param(
            json.dumps({"error": {"class": "GenericError"}}),
            QueryReading(state=AgentState.ERROR, detail="GenericError: GenericError"),
            id="error-without-description",
        ),
        pytest.param(
            json.dumps({"error": "broken"}),
            QueryReading(state=AgentState.INVALID, detail="reply has a malformed 'error'"),
            id="error-not-an-object",
        ),
        pytest.param(
            json.dumps({"error": {"desc": "not currently supported"}}),
            QueryReading(state=AgentState.INVALID, detail="reply error has no class"),
            id="error-without-class",
        ),
    ],
)
def test_an_agent_error_is_classified_by_class_and_description(
    raw: str, expected: QueryReading
) -> None:
    assert parse_cpustats_reply(raw) == expected


def test_an_agent_error_wins_over_a_return_in_the_same_reply() -> None:
    raw = json.dumps(
        {
            "return": [linux_cpu(0, user=1)],
            "error": {"class": "CommandNotFound", "desc": "disabled"},
        }
    )
    assert parse_cpustats_reply(raw).state is AgentState.UNSUPPORTED


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            "internal error: unable to execute QEMU agent command 'guest-get-cpustats': "
            "this feature or command is not currently supported",
            AgentState.UNSUPPORTED,
            id="not-currently-supported",
        ),
        pytest.param(
            "internal error: unable to execute QEMU agent command 'guest-get-cpustats': "
            "The command guest-get-cpustats has not been found",
            AgentState.UNSUPPORTED,
            id="not-found",
        ),
        pytest.param(
            "internal error: unable to execute QEMU agent command 'guest-get-cpustats': "
            'open("/proc/stat"): Permission denied',
            AgentState.ERROR,
            id="other-failure",
        ),
    ],
)
def test_a_libvirt_agent_command_failure_is_classified_by_its_text(
    message: str, expected: AgentState
) -> None:
    assert VIR_ERR_AGENT_COMMAND_FAILED == 113
    assert classify_libvirt_error(code=VIR_ERR_AGENT_COMMAND_FAILED, message=message) is expected


# --- Accumulation ------------------------------------------------------------------------------


def test_the_first_answer_counts_every_counter_whole() -> None:
    answer = {0: {"user": 200, "system": 1840}, 1: {"user": 50}}
    kept = accumulate(None, answer)
    assert kept.last == answer
    assert kept.online == frozenset({0, 1})
    assert set(kept.seconds) == {0, 1}
    assert kept.seconds[0] == pytest.approx({"user": 0.2, "system": 1.84})
    assert kept.seconds[1] == pytest.approx({"user": 0.05})


def test_growth_adds_the_difference_since_the_last_answer() -> None:
    first = accumulate(None, {0: {"user": 1000, "idle": 5000}})
    second = accumulate(first, {0: {"user": 1700, "idle": 5000}})
    third = accumulate(second, {0: {"user": 2000, "idle": 9000}})
    assert second.seconds[0] == pytest.approx({"user": 1.7, "idle": 5.0})
    assert third.seconds[0] == pytest.approx({"user": 2.0, "idle": 9.0})
    assert third.last == {0: {"user": 2000, "idle": 9000}}


def test_accumulating_leaves_the_previous_value_unchanged() -> None:
    first = accumulate(None, {0: {"user": 1000}})
    accumulate(first, {0: {"user": 3000}, 1: {"user": 500}})
    assert first.seconds == {0: {"user": 1.0}}
    assert first.last == {0: {"user": 1000}}


def test_a_counter_going_backwards_counts_its_new_value_and_the_sum_never_decreases() -> None:
    kept = fold_all(
        SUMMED,
        [
            {0: {"user": 5000, "idle": 60_000}, 1: {"user": 3000, "idle": 70_000}},
            # The guest rebooted: every counter starts again from a small value.
            {0: {"user": 300, "idle": 1000}, 1: {"user": 100, "idle": 2000}},
        ],
    )
    assert summed(kept) == pytest.approx({"user": 8.4, "idle": 133.0})
    grown = SUMMED.fold(kept, {0: {"user": 800, "idle": 1500}, 1: {"user": 100, "idle": 2100}})
    assert summed(grown) == pytest.approx({"user": 8.9, "idle": 133.6})


def test_one_counter_going_backwards_does_not_disturb_the_others() -> None:
    kept = fold_all(SUMMED, [{0: {"user": 5000, "idle": 1000}}, {0: {"user": 6000, "idle": 10}}])
    assert summed(kept) == pytest.approx({"user": 6.0, "idle": 1.01})


def test_a_cpu_that_disappears_keeps_its_seconds_in_the_sum_but_leaves_per_cpu_samples() -> None:
    answers: list[CpuMilliseconds] = [
        {0: {"user": 1000}, 1: {"user": 4000}},
        {0: {"user": 1500}},
    ]
    summed_kept = fold_all(SUMMED, answers)
    per_cpu_kept = fold_all(PER_CPU, answers)
    assert summed(summed_kept) == pytest.approx({"user": 5.5})
    assert per_cpu(per_cpu_kept) == pytest.approx({("0", "user"): 1.5})
    assert isinstance(summed_kept, GuestCpuTimes)
    assert summed_kept.seconds[1] == pytest.approx({"user": 4.0})


def test_a_cpu_that_appears_later_counts_from_its_value() -> None:
    answers: list[CpuMilliseconds] = [
        {0: {"user": 1000}},
        {0: {"user": 1200}, 1: {"user": 400}},
        {0: {"user": 1300}, 1: {"user": 900}},
    ]
    assert summed(fold_all(SUMMED, answers)) == pytest.approx({"user": 2.2})
    assert per_cpu(fold_all(PER_CPU, answers)) == pytest.approx(
        {("0", "user"): 1.3, ("1", "user"): 0.9}
    )


def test_a_cpu_that_comes_back_online_counts_only_its_growth() -> None:
    answers: list[CpuMilliseconds] = [
        {0: {"user": 1000}, 1: {"user": 1000}},
        {0: {"user": 2000}},
        {0: {"user": 3000}, 1: {"user": 1500}},
    ]
    assert summed(fold_all(SUMMED, answers)) == pytest.approx({"user": 4.5})
    assert per_cpu(fold_all(PER_CPU, answers[:2])) == pytest.approx({("0", "user"): 2.0})
    assert per_cpu(fold_all(PER_CPU, answers)) == pytest.approx(
        {("0", "user"): 3.0, ("1", "user"): 1.5}
    )


def test_an_offline_cpu_keeps_its_last_counters_but_leaves_the_online_set() -> None:
    first = accumulate(None, {0: {"user": 1000}, 1: {"user": 4000, "idle": 9000}})
    second = accumulate(first, {0: {"user": 1100}})
    assert second.online == frozenset({0})
    assert second.last == {0: {"user": 1100}, 1: {"user": 4000, "idle": 9000}}
    assert second.seconds[1] == pytest.approx({"user": 4.0, "idle": 9.0})


def test_a_cpu_that_comes_back_with_smaller_counters_counts_its_new_value() -> None:
    answers: list[CpuMilliseconds] = [
        {0: {"user": 1000}, 1: {"user": 5000}},
        {0: {"user": 2000}},
        # The guest rebooted while CPU 1 was offline: its counter starts again.
        {0: {"user": 2100}, 1: {"user": 200}},
    ]
    kept = fold_all(SUMMED, answers)
    assert isinstance(kept, GuestCpuTimes)
    assert kept.seconds[1] == pytest.approx({"user": 5.2})
    assert summed(kept) == pytest.approx({"user": 7.3})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="none"),
        pytest.param("not a mapping", id="string"),
        pytest.param(QueryReading(state=AgentState.TIMEOUT), id="reading"),
    ],
)
def test_folding_something_that_is_not_an_answer_keeps_the_previous_value(value: object) -> None:
    previous = SUMMED.fold(None, ok_value(REAL_REPLY))
    assert SUMMED.fold(previous, value) is previous
    assert SUMMED.fold(None, value) is None


def test_folding_on_a_foreign_previous_value_starts_counting_afresh() -> None:
    kept = SUMMED.fold("a value of another query", {0: {"user": 2500}})
    assert isinstance(kept, GuestCpuTimes)
    assert summed(kept) == pytest.approx({"user": 2.5})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="none"),
        pytest.param({0: {"user": 1000}}, id="raw-answer"),
        pytest.param(1.5, id="number"),
    ],
)
def test_a_value_that_was_not_folded_has_no_samples(value: object) -> None:
    assert list(SUMMED.samples(value)) == []
    assert list(PER_CPU.samples(value)) == []


def test_per_cpu_samples_follow_the_answers_through_parse_and_fold() -> None:
    first = ok_value(reply(linux_cpu(0, user=200, steal=0), linux_cpu(1, user=100, steal=40)))
    second = ok_value(reply(linux_cpu(0, user=700, steal=10), linux_cpu(1, user=50, steal=60)))
    kept = fold_all(PER_CPU, [first, second])
    samples = per_cpu(kept)
    assert samples == pytest.approx(
        {("0", "user"): 0.7, ("0", "steal"): 0.01, ("1", "user"): 0.15, ("1", "steal"): 0.06}
    )
    assert list(samples) == [("0", "user"), ("0", "steal"), ("1", "user"), ("1", "steal")]


# --- Monotonicity, for any sequence of answers -------------------------------------------------

_counters = st.integers(min_value=0, max_value=10**12)
_answers = st.dictionaries(
    st.integers(min_value=0, max_value=5),
    st.dictionaries(st.sampled_from(MODES), _counters, max_size=len(MODES)),
    max_size=4,
)


@settings(max_examples=150, deadline=None, database=None)
@given(answers=st.lists(_answers, min_size=1, max_size=8), per_cpu_option=st.booleans())
def test_every_summed_mode_never_decreases_across_folds(
    answers: list[dict[int, dict[str, int]]], per_cpu_option: bool
) -> None:
    query = CpuStatsQuery(per_cpu=per_cpu_option)
    kept: object = None
    before: dict[str, float] = {}
    for answer in answers:
        raw = reply(*(linux_cpu(cpu, **modes) for cpu, modes in answer.items()))
        reading = query.parse_agent_reply(raw)
        kept = query.fold(kept, reading.value if reading.state is AgentState.OK else None)
        after = summed(kept)
        for mode, seconds in before.items():
            assert mode in after
            assert after[mode] >= seconds
        assert all(math.isfinite(seconds) and seconds >= 0 for seconds in after.values())
        before = after


@settings(max_examples=150, deadline=None, database=None)
@given(answers=st.lists(_answers, min_size=1, max_size=8))
def test_per_cpu_samples_show_the_latest_cpus_with_at_least_their_reported_time(
    answers: list[dict[int, dict[str, int]]],
) -> None:
    kept: object = None
    latest: dict[int, dict[str, int]] = {}
    for answer in answers:
        kept = PER_CPU.fold(kept, answer) if answer else kept
        latest = answer or latest
        samples = per_cpu(kept)
        reported_keys = {(str(cpu), mode) for cpu, modes in latest.items() for mode in modes}
        assert reported_keys <= set(samples)
        assert {cpu for cpu, _ in samples} <= {str(cpu) for cpu in latest}
        for cpu, modes in latest.items():
            for mode, milliseconds in modes.items():
                reported = milliseconds / 1000.0
                assert samples[str(cpu), mode] >= reported - 1e-9 * max(1.0, reported)


# --- The shares of the last poll interval ------------------------------------------------


def last_poll(value: object) -> dict[str, float]:
    """The last-poll share samples of a kept value: share -> ratio."""
    return {
        labels[0]: ratio
        for family, labels, ratio in SUMMED.samples(value)
        if family is GUEST_CPU_LAST_POLL
    }


def test_the_first_answer_has_no_last_poll_shares() -> None:
    kept = fold_all(SUMMED, [{0: {"user": 5_000, "idle": 5_000}}])
    assert last_poll(kept) == {}


def test_the_shares_are_those_of_the_time_gained_since_the_previous_answer() -> None:
    # A long idle history, then one interval of 30 s: 24 s user, 3 s system, 3 s iowait.
    idle = {0: {"user": 1_000, "system": 0, "idle": 3_600_000, "iowait": 0, "steal": 0}}
    busy = {0: {"user": 25_000, "system": 3_000, "idle": 3_600_000, "iowait": 3_000, "steal": 0}}
    kept = fold_all(SUMMED, [idle, busy])
    assert last_poll(kept) == pytest.approx({"busy": 0.9, "iowait": 0.1, "steal": 0.0})


def test_the_shares_add_up_over_cpus_and_leave_out_a_cpu_new_in_the_answer() -> None:
    first = {0: {"user": 0, "idle": 0}}
    second = {
        0: {"user": 1_000, "idle": 3_000},
        1: {"user": 90_000, "idle": 0},  # plugged in: its earlier time is not this interval's
    }
    kept = fold_all(SUMMED, [first, second])
    assert last_poll(kept) == pytest.approx({"busy": 0.25, "iowait": 0.0, "steal": 0.0})


@pytest.mark.parametrize(
    "second",
    [
        pytest.param({0: {"user": 10, "idle": 5_000}}, id="a counter went backwards (reboot)"),
        pytest.param({0: {"user": 1_000, "idle": 2_000}}, id="no time passed"),
    ],
)
def test_no_shares_where_the_interval_is_not_known(second: CpuMilliseconds) -> None:
    kept = fold_all(SUMMED, [{0: {"user": 1_000, "idle": 2_000}}, second])
    assert last_poll(kept) == {}


def test_the_per_cpu_query_exports_the_same_shares_per_vm() -> None:
    answers = [{0: {"user": 0, "idle": 0}}, {0: {"user": 500, "idle": 500}}]
    kept = fold_all(PER_CPU, answers)
    shares = {
        labels: ratio
        for family, labels, ratio in PER_CPU.samples(kept)
        if family is GUEST_CPU_LAST_POLL
    }
    assert shares == {("busy",): 0.5, ("iowait",): 0.0, ("steal",): 0.0}
