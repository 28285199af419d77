"""Hostile guest answers and label values: the exposition stays valid, other VMs unchanged.

The generated cases and the path from an answer to a scrape body are in
:mod:`tests.unit.hostile_answers`. The counts of cases that ran are printed. The unit run keeps
the counts small (seconds); ``tests/security/test_properties_many.py`` runs the same checks with
many more cases and passes a sample of the bodies through ``promtool check metrics``.
"""

from __future__ import annotations

import math

import pytest

from guestload.queries.load import MAX_PASSTHROUGH_REPLY_CHARS
from tests.unit.hostile_answers import (
    LONG_TRICKY_NAME,
    Answer,
    Guest,
    check_exposition,
    expose,
    long_tricky_exposition,
    oversized_reply,
    report,
    run_cases,
)

UNIT_CASES = 120


def test_any_agent_answer_and_label_values_give_valid_exposition(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The same cases every run: the unit tier is repeatable; tests/security draws new ones.
    run = run_cases(cases=UNIT_CASES, keep_bodies=0, derandomize=True)
    report(run, capsys, "hostile answers and labels")
    assert run.cases >= UNIT_CASES // 2
    assert len(run.states) >= 3, run.states  # the generator reaches several outcomes


@pytest.mark.parametrize(
    ("answer", "state"),
    [
        (Answer("guest_info", {"load.1m": math.nan, "load.5m": 1, "load.15m": 1}), "invalid"),
        (Answer("guest_info", {"load.1m": -math.inf, "load.5m": 1, "load.15m": 1}), "invalid"),
        (Answer("guest_info", {"load.1m": 10**400, "load.5m": 1, "load.15m": 1}), "invalid"),
        (Answer("guest_info", {"load.1m": "7", "load.5m": 1, "load.15m": 1}), "invalid"),
        (Answer("guest_info", {"load.1m": -1, "load.5m": 1, "load.15m": 1}), "invalid"),
        (Answer("guest_info", {"load.1m": 1}), "invalid"),
        (Answer("guest_info", {}), "no_data"),
        (Answer("guest_info", ["load.1m", 1]), "invalid"),
        (Answer("passthrough", "{" * 100_000), "invalid"),
        (Answer("passthrough", oversized_reply(MAX_PASSTHROUGH_REPLY_CHARS)), "invalid"),
        (Answer("passthrough", '{"return": {"load1m": 2, "load5m": 1, "load15m": 0}}'), "ok"),
    ],
    ids=lambda value: value.kind if isinstance(value, Answer) else str(value),
)
def test_known_hostile_answers(answer: Answer, state: str) -> None:
    guest = Guest(domain_name='ns_vm "quoted" \\ back\nslash', kubevirt=True, node="n\u00e9")
    exposition = expose(answer, guest)
    assert exposition.reading.state.value == state
    check_exposition(exposition)


def test_long_and_tricky_names_round_trip_exactly() -> None:
    exposition = long_tricky_exposition()
    check_exposition(exposition)
    assert exposition.victim.name == LONG_TRICKY_NAME
