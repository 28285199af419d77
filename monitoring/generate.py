"""Renders the bundle's generated files from monitoring/config.yml, or checks them (--check).

Usage: python -m monitoring.generate [--check]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from monitoring.alerts_doc import render_tables, splice
from monitoring.dashboard import render_dashboard
from monitoring.kubevirt import (
    build_kubevirt_groups,
    render_kubevirt_dashboard,
    render_kubevirt_rule_file,
)
from monitoring.mixin import render_mixin
from monitoring.prometheusrule import render_prometheusrule
from monitoring.rules import alerting_rules, build_groups, render_rule_file
from monitoring.settings import SettingsError, load_settings

REPOSITORY = Path(__file__).resolve().parent.parent
CONFIG = Path("monitoring/config.yml")
RULE_FILE = Path("monitoring/rules/guestload.rules.yml")
PROMETHEUSRULE = Path("monitoring/kubernetes/prometheusrule.yaml")
KUBEVIRT_RULE_FILE = Path("monitoring/rules/guestload-kubevirt.rules.yml")
KUBEVIRT_PROMETHEUSRULE = Path("monitoring/kubernetes/kubevirt/prometheusrule.yaml")
KUBEVIRT_DASHBOARD = Path("monitoring/dashboards/guestload-kubevirt.json")
DASHBOARD = Path("monitoring/dashboards/guestload.json")
ALERTS_DOC = Path("docs/alerts.md")
MIXIN = Path("monitoring/mixin")


@dataclass(frozen=True, slots=True)
class Output:
    """A generated file: where it lives (relative to the repository) and what it must hold."""

    path: Path
    text: str


def render_all(root: Path) -> list[Output]:
    """Every generated file as a fresh generation from *root*'s config.yml would write it."""
    settings = load_settings(root / CONFIG)
    groups = build_groups(settings)
    named = {rule.alert for rule in alerting_rules(groups)}
    if named != set(settings.alerts):
        raise SettingsError(
            "config.yml and the rules name different alerts: "
            f"{sorted(named.symmetric_difference(settings.alerts))}"
        )
    rule_file = render_rule_file(groups)
    kubevirt_rule_file = render_kubevirt_rule_file(build_kubevirt_groups(settings))
    alerts_doc = (root / ALERTS_DOC).read_text(encoding="utf-8")
    return [
        Output(RULE_FILE, rule_file),
        Output(PROMETHEUSRULE, render_prometheusrule(rule_file)),
        Output(KUBEVIRT_RULE_FILE, kubevirt_rule_file),
        Output(
            KUBEVIRT_PROMETHEUSRULE,
            render_prometheusrule(
                kubevirt_rule_file, name="guestload-kubevirt", rule_file=str(KUBEVIRT_RULE_FILE)
            ),
        ),
        Output(DASHBOARD, render_dashboard(settings)),
        Output(KUBEVIRT_DASHBOARD, render_kubevirt_dashboard(settings)),
        Output(ALERTS_DOC, splice(alerts_doc, render_tables(settings=settings, groups=groups))),
        *(Output(MIXIN / name, text) for name, text in render_mixin(settings).items()),
    ]


def stale_outputs(root: Path, outputs: Sequence[Output]) -> list[Path]:
    """The outputs whose file under *root* is missing or differs from the fresh text."""
    stale = []
    for output in outputs:
        target = root / output.path
        if not target.is_file() or target.read_text(encoding="utf-8") != output.text:
            stale.append(output.path)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """Write the generated files, or with --check report those that are out of date."""
    parser = argparse.ArgumentParser(prog="python -m monitoring.generate", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a committed file differs from a fresh generation",
    )
    parser.add_argument(
        "--root", type=Path, default=REPOSITORY, help="repository root (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    root: Path = args.root
    outputs = render_all(root)
    stale = stale_outputs(root, outputs)
    if args.check:
        for path in stale:
            print(f"{path}: differs from a fresh generation; run python -m monitoring.generate")
        return 1 if stale else 0
    for output in outputs:
        if output.path in stale:
            target = root / output.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(output.text, encoding="utf-8")
            print(f"wrote {output.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
