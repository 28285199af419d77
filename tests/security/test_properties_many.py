"""The property checks of ``tests/unit/test_properties.py`` with many more generated cases.

A sample of the generated bodies also goes through ``promtool check metrics``.
"""

from __future__ import annotations

import pytest

from tests.promtool import promtool_verdicts
from tests.unit.hostile_answers import report, run_cases

MANY_CASES = 2000
PROMTOOL_SAMPLES = 100


def test_many_hostile_answers_and_labels_give_valid_exposition(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = run_cases(cases=MANY_CASES, keep_bodies=PROMTOOL_SAMPLES)
    report(run, capsys, "hostile answers and labels (many)")
    assert run.cases >= MANY_CASES * 0.9
    assert len(run.sampled_bodies) >= PROMTOOL_SAMPLES * 0.9
    assert promtool_verdicts(run.sampled_bodies) == []
