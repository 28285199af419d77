"""The dashboard type-checks against Grafana's published schema (npm @grafana/schema).

The dashboard JSON becomes a TypeScript module of object literals typed with the schema's
Dashboard, and each panel's field config and options with its panel plugin's own types. An
object literal may only name the properties its type declares, so `tsc --strict` rejects an
unknown field anywhere, a value of the wrong type, and a panel of the wrong shape (say a table
carrying a time series' line style).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.monitoring.grafana_schema import type_check
from tests.monitoring.monitoring_bundle import DASHBOARD


def _shipped() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def _first(dashboard: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(panel for panel in dashboard["panels"] if panel["type"] == kind)


def test_shipped_dashboard_type_checks_against_grafana_schema(tmp_path: Path) -> None:
    status, output = type_check(_shipped(), tmp_path)
    assert status == 0, output


def _unknown_dashboard_field(dashboard: dict[str, Any]) -> None:
    dashboard["refreshInterval"] = "1m"


def _unknown_panel_field(dashboard: dict[str, Any]) -> None:
    _first(dashboard, "timeseries")["legendFormat"] = "{{name}}"


def _unknown_variable_field(dashboard: dict[str, Any]) -> None:
    dashboard["templating"]["list"][1]["multiSelect"] = True


def _threshold_as_text(dashboard: dict[str, Any]) -> None:
    steps = _first(dashboard, "timeseries")["fieldConfig"]["defaults"]["thresholds"]["steps"]
    steps.append({"color": "red", "value": "20"})


def _unknown_threshold_mode(dashboard: dict[str, Any]) -> None:
    _first(dashboard, "timeseries")["fieldConfig"]["defaults"]["thresholds"]["mode"] = "fixed"


def _line_style_on_a_table(dashboard: dict[str, Any]) -> None:
    _first(dashboard, "table")["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line"}


def _unknown_draw_style(dashboard: dict[str, Any]) -> None:
    custom = _first(dashboard, "timeseries")["fieldConfig"]["defaults"]["custom"]
    custom["drawStyle"] = "area"


def _custom_field_config_on_a_stat(dashboard: dict[str, Any]) -> None:
    _first(dashboard, "stat")["fieldConfig"]["defaults"]["custom"] = {"lineWidth": 1}


def _row_without_collapsed(dashboard: dict[str, Any]) -> None:
    del _first(dashboard, "row")["collapsed"]


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (_unknown_dashboard_field, "TS2353"),
        (_unknown_panel_field, "TS2353"),
        (_unknown_variable_field, "TS2353"),
        (_threshold_as_text, "TS2322"),
        (_unknown_threshold_mode, "TS2322"),
        (_line_style_on_a_table, "TS2353"),
        (_unknown_draw_style, "TS2322"),
        (_custom_field_config_on_a_stat, "TS2322"),
        (_row_without_collapsed, "TS2741"),
    ],
    ids=lambda value: getattr(value, "__name__", value).strip("_").replace("_", "-"),
)
def test_a_dashboard_of_the_wrong_shape_fails_thetype_check(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], error: str
) -> None:
    dashboard = _shipped()
    mutate(dashboard)
    status, output = type_check(dashboard, tmp_path)
    assert status != 0
    assert f"error {error}" in output, output
