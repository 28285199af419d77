"""Type-checks a dashboard against Grafana's published schema (npm @grafana/schema).

The dashboard JSON becomes a TypeScript module of object literals typed with the schema's
Dashboard, and each panel's field config and options with its panel plugin's own types. An
object literal may only name the properties its type declares, so `tsc --strict` rejects an
unknown field anywhere, a value of the wrong type, and a panel of the wrong shape (say a table
carrying a time series' line style).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.monitoring.monitoring_bundle import MONITORING, npm_tool, run

SCHEMA = "@grafana/schema"
PANEL_TYPES = {
    "timeseries": "TimeSeriesPanelCfg",
    "table": "TablePanelCfg",
    "stat": "StatPanelCfg",
    "bargauge": "BarGaugePanelCfg",
}
"""The panel plugins the dashboard may use, by the name of their schema module."""
WITHOUT_FIELD_CONFIG = frozenset({"stat", "bargauge"})
"""Plugins whose schema declares no custom field config: theirs must stay empty."""

PRELUDE = f"""import type {{ Dashboard, Panel, RowPanel }} from "{SCHEMA}";
{{imports}}

// JSON has no enums: a string enum becomes the union of its values, recursively.
type Json<T> = T extends string
  ? `${{T}}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Json<U>>
      : T extends object
        ? {{ [K in keyof T]: Json<T[K]> }}
        : T;
type None = Record<string, never>;
"""
TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "noEmit": True,
        "module": "esnext",
        "moduleResolution": "bundler",
        "target": "es2022",
        "skipLibCheck": True,
        "types": [],
    },
    "files": ["dashboard.ts"],
}


def module_source(dashboard: dict[str, Any]) -> str:
    """The TypeScript module that holds *dashboard* as typed object literals."""
    used = sorted({panel["type"] for panel in dashboard["panels"] if panel["type"] != "row"})
    unknown = set(used) - set(PANEL_TYPES)
    assert not unknown, f"panel types without a schema check: {unknown}"
    imports = "\n".join(
        f'import type * as {kind} from "{SCHEMA}/dist/esm/raw/composable/{kind}/panelcfg/x/'
        f'{PANEL_TYPES[kind]}_types.gen";'
        for kind in used
    )
    lines = [
        PRELUDE.replace("{imports}", imports),
        f"export const dashboard: Json<Dashboard> = {json.dumps(dashboard, indent=2)};",
    ]
    for panel in dashboard["panels"]:
        kind = panel["type"]
        # Alone, not as a member of the dashboard's Panel | RowPanel union, which lets a row
        # without its row fields pass as a panel.
        panel_type = "RowPanel" if kind == "row" else "Panel"
        lines.append(f"export const panel{panel['id']}: Json<{panel_type}> = {json.dumps(panel)};")
        if kind == "row":
            continue
        # Stored dashboards keep only what differs from the plugin's defaults: Partial.
        if "custom" in panel["fieldConfig"]["defaults"]:
            custom = panel["fieldConfig"]["defaults"]["custom"]
            custom_type = (
                "None" if kind in WITHOUT_FIELD_CONFIG else f"Json<Partial<{kind}.FieldConfig>>"
            )
            lines.append(f"export const custom{panel['id']}: {custom_type} = {json.dumps(custom)};")
        options = panel.get("options", {})
        lines.append(
            f"export const options{panel['id']}: Json<Partial<{kind}.Options>> = "
            f"{json.dumps(options)};"
        )
    return "\n".join(lines) + "\n"


def type_check(dashboard: dict[str, Any], directory: Path) -> tuple[int, str]:
    """tsc's verdict on *dashboard*, compiled in *directory* against monitoring/node_modules."""
    tsc = npm_tool("tsc")
    (directory / "dashboard.ts").write_text(module_source(dashboard), encoding="utf-8")
    (directory / "tsconfig.json").write_text(json.dumps(TSCONFIG), encoding="utf-8")
    (directory / "node_modules").symlink_to(MONITORING / "node_modules")
    result = run([tsc, "--project", directory / "tsconfig.json"], cwd=directory)
    return result.returncode, result.stdout + result.stderr
