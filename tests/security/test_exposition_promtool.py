"""promtool accepts the exposition: the golden sample and a VM with a long, tricky name.

The unit tier checks these bodies with prometheus_client's parsers; promtool is Prometheus'
own parser, so it runs here, with the other tests that need programs from the system.
"""

from __future__ import annotations

from tests.promtool import promtool_verdicts
from tests.unit.hostile_answers import LONG_TRICKY_NAME, long_tricky_exposition
from tests.unit.snapshots import rendered


def test_promtool_accepts_the_golden_exposition() -> None:
    assert promtool_verdicts([rendered(), rendered(vcpu=False)]) == []


def test_promtool_accepts_a_long_and_tricky_name() -> None:
    exposition = long_tricky_exposition()
    assert exposition.victim.name == LONG_TRICKY_NAME
    assert promtool_verdicts([exposition.text]) == []


def test_promtool_rejects_a_broken_body() -> None:
    """The check can fail: a sample line without a value is reported."""
    (problem,) = promtool_verdicts([rendered() + b'kubevirt_vmi_guest_load_1m{name="x"}\n'])
    assert "kubevirt_vmi_guest_load_1m" in problem
