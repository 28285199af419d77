"""Puts the monitoring bundle of this version into the wheel, as ``guestload/bundle/``.

The bundle's files live where the project builds and tests them (``monitoring/``,
``docs/runbooks/``); building the package copies them next to the code, so a wheel alone
carries the rules, PrometheusRule, dashboard, monitoring mixin and runbooks that match it, and
the systemd unit that runs it (``guestload bundle --output DIR`` writes them out).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent

BUNDLE_SOURCES = {
    "rules": "monitoring/rules",
    "rules-tests": "monitoring/tests",
    "kubernetes": "monitoring/kubernetes",
    "dashboards": "monitoring/dashboards",
    "mixin": "monitoring/mixin",
    "runbooks": "docs/runbooks",
    "alerts.md": "docs/alerts.md",
    "systemd": "deploy/systemd",
}
"""Where each part of the bundle comes from, relative to the repository root."""


class BuildWithBundle(build_py):
    """``build_py`` that also copies the monitoring bundle into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "guestload" / "bundle"
        shutil.rmtree(target, ignore_errors=True)
        for name, source in BUNDLE_SOURCES.items():
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, target / name)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(origin, target / name)


setup(cmdclass={"build_py": BuildWithBundle})
