"""The promtool test cases' input as real samples, and rule results read back from a store.

Each case of ``monitoring/tests/*.test.yml`` becomes the samples its ``input_series`` describe
(promtool's expanding notation: ``a+bxn``, ``axn``, ``_``, ``_xn``), placed in its own window
of time so that no case sees another's series. Loaded into two stores and evaluated there by
the same rule files, the results can be compared step by step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from guestload.settings import parse_duration

# Between two cases: longer than every window the rules read (10m ranges, offset 10m,
# 5m lookback), so a case starts from nothing.
CASE_GAP_SECONDS = 3600.0
_EXPANDING = re.compile(
    r"^(?P<start>[-+]?[^x+-][^x]*?)(?:(?P<sign>[+-])(?P<step>[^x]+))?x(?P<n>\d+)$"
)

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


def expand_values(notation: str) -> list[float | None]:
    """promtool's series notation as one value per step; None where a sample is missing.

    A ``stale`` marker (the series ends there) is a missing sample too: the stores are loaded
    with samples, not staleness markers, so both engines see the series end alike, after
    their lookback rather than at once.
    """
    values: list[float | None] = []
    for token in notation.split():
        if token in {"_", "stale"}:
            values.append(None)
        elif token.startswith("_x"):
            values.extend([None] * int(token[2:]))
        elif match := _EXPANDING.match(token):
            start = float(match["start"])
            step = float(match["step"] or 0) * (-1 if match["sign"] == "-" else 1)
            values.extend(start + step * i for i in range(int(match["n"]) + 1))
        else:
            values.append(float(token))
    return values


def parse_series(text: str) -> SeriesKey:
    """``name{label="value", ...}`` as (name, sorted label pairs)."""
    (family,) = text_string_to_metric_families(f"{text} 0\n")
    (sample,) = family.samples
    return sample.name, tuple(sorted(sample.labels.items()))


@dataclass(frozen=True, slots=True)
class Case:
    """One promtool test case placed at ``start`` (seconds) and compared up to ``end``."""

    name: str
    start: float
    end: float
    interval: float
    series: dict[SeriesKey, list[float | None]]


def load_cases(files: Sequence[Path], *, first_start: float) -> list[Case]:
    """Every test case of ``files``, one after the other from ``first_start``."""
    cases: list[Case] = []
    start = first_start
    for path in files:
        document: dict[str, Any] = yaml.safe_load(path.read_text())
        default_interval = parse_duration(document.get("evaluation_interval", "1m"))
        for test in document["tests"]:
            interval = parse_duration(test.get("interval", "1m"))
            if interval != default_interval:
                raise ValueError(f"{path}: a case's interval differs from evaluation_interval")
            series = {
                _own_identity(parse_series(item["series"]), len(cases)): expand_values(
                    item["values"]
                )
                for item in test["input_series"]
            }
            steps = max(len(values) for values in series.values())
            eval_times = [
                parse_duration(check["eval_time"])
                for key in ("alert_rule_test", "promql_expr_test")
                for check in test.get(key, [])
            ]
            span = max([interval * (steps - 1), *eval_times])
            cases.append(
                Case(
                    name=f"{path.name}: {test.get('name', '?')}",
                    start=start,
                    end=start + span,
                    interval=interval,
                    series=series,
                )
            )
            start += math.ceil((span + CASE_GAP_SECONDS) / 3600) * 3600
    return cases


# Labels that name a VM's or an exporter's identity: made unique per case.
IDENTITY_LABELS = ("node", "instance")


def _own_identity(key: SeriesKey, index: int) -> SeriesKey:
    """The series with its ``node`` and ``instance`` made unique to case ``index``.

    Cases reuse names (``shop/db`` on ``node-a``), and a range query spans several cases:
    MetricsQL's ``a or on (...) b`` works series by series over the whole range (it fills the
    steps where ``a`` has no value with ``b``'s values under ``a``'s labels), so one case's
    guest view would lend its labels to another case's host view. Live rule evaluation asks
    one step at a time, where both engines agree.
    """
    name, labels = key
    return name, tuple(
        (label, f"{value}.case{index}" if label in IDENTITY_LABELS else value)
        for label, value in labels
    )


def import_text(cases: Iterable[Case]) -> str:
    """All samples of ``cases`` in the Prometheus text format with millisecond timestamps."""
    lines: list[str] = []
    for case in cases:
        for (name, labels), values in case.series.items():
            rendered = ",".join(f'{key}="{_escape(value)}"' for key, value in labels)
            for step, value in enumerate(values):
                if value is not None:
                    at = round((case.start + step * case.interval) * 1000)
                    lines.append(f"{name}{{{rendered}}} {value!r} {at}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


Samples = dict[SeriesKey, dict[float, float]]


def samples_from_matrix(result: Iterable[dict[str, Any]]) -> Samples:
    """A Prometheus matrix (``values`` as [seconds, "text"]) as {series: {seconds: value}}."""
    samples: Samples = {}
    for item in result:
        labels = dict(item["metric"])
        name = labels.pop("__name__")
        key = (name, tuple(sorted(labels.items())))
        samples[key] = {float(at): float(value) for at, value in item["values"]}
    return samples


def samples_from_export(lines: Iterable[dict[str, Any]]) -> Samples:
    """VictoriaMetrics' ``/api/v1/export`` lines as {series: {seconds: value}}."""
    samples: Samples = {}
    for item in lines:
        labels = dict(item["metric"])
        name = labels.pop("__name__")
        key = (name, tuple(sorted(labels.items())))
        values = samples.setdefault(key, {})
        for at, value in zip(item["timestamps"], item["values"], strict=True):
            values[at / 1000] = float(value)
    return samples


# The longest stretch of input any rule reads at one step: a 10m range over a series that
# is itself compared 10m back (``offset 10m``).
WINDOW_SECONDS = 1200.0


def steady_steps(case: Case, *, window: float = WINDOW_SECONDS) -> set[float]:
    """The steps of ``case`` at which every input series had a sample at every step of the
    ``window`` before: no series starts, ends or has a gap in what the rules read.

    At the edges of a series' life the engines differ by design: PromQL's ``rate`` divides
    the extrapolated increase by the whole range while MetricsQL's divides by the time the
    samples cover, and PromQL's 5m lookback keeps a vanished series where MetricsQL's
    interval-sized one does not.
    """
    steps = max(len(values) for values in case.series.values())
    present = [
        all(i < len(v) and v[i] is not None for v in case.series.values()) for i in range(steps)
    ]
    back = round(window / case.interval)
    return {
        case.start + i * case.interval for i in range(back, steps) if all(present[i - back : i + 1])
    }


def comparable(samples: Samples, cases: Sequence[Case], alert_for: dict[str, float]) -> Samples:
    """Only the samples at steady steps: for ``ALERTS`` of an alert with ``for: F``, steps whose
    whole last F was steady (its pending state started within what both engines agree on)."""
    step = round(min(case.interval for case in cases))
    steady: set[float] = set()
    for case in cases:
        steady |= steady_steps(case)
    kept: Samples = {}
    for key, points in samples.items():
        name, labels = key
        hold = alert_for.get(dict(labels).get("alertname", ""), 0.0) if name == "ALERTS" else 0.0
        inside = {
            at: value
            for at, value in points.items()
            if all(at - back in steady for back in range(0, round(hold) + 1, step))
        }
        if inside:
            kept[key] = inside
    return kept


def differences(
    expected: Samples, got: Samples, *, tolerance: float = 1e-6
) -> list[tuple[SeriesKey, float, float | None, float | None]]:
    """(series, time, expected, got) wherever a sample is missing on one side or the values
    differ by more than ``tolerance`` (relative, absolute below 1)."""
    found: list[tuple[SeriesKey, float, float | None, float | None]] = []
    for key in sorted(expected.keys() | got.keys()):
        ours, theirs = expected.get(key, {}), got.get(key, {})
        for at in sorted(ours.keys() | theirs.keys()):
            a, b = ours.get(at), theirs.get(at)
            if (
                a is None
                or b is None
                or not (
                    (math.isnan(a) and math.isnan(b))
                    or abs(a - b) <= tolerance * max(1.0, abs(a), abs(b))
                )
            ):
                found.append((key, at, a, b))
    return found
