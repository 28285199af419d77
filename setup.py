"""Puts the monitoring bundle of this version into the wheel, as ``guestload/bundle/``.

The bundle's files live where the project builds and tests them (``monitoring/``,
``docs/runbooks/``, ``deploy/systemd/``); building the package copies them next to the code, so
a wheel alone carries the rules, PrometheusRule, dashboard, monitoring mixin and runbooks that
match it, and the systemd unit that runs it (``guestload bundle --output DIR`` writes them out).
Which files is written once, in ``pyproject.toml``'s ``[tool.guestload.bundle]``: this build
copies them into the wheel and lists them for the sdist (from which the wheel is built again),
and ``tests/deploy/test_release.py`` reads the same table.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def bundle_files() -> dict[str, Path]:
    """Every bundle file by its path inside the bundle, from ``[tool.guestload.bundle]``."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    files: dict[str, Path] = {}
    for name, source in pyproject["tool"]["guestload"]["bundle"].items():
        origin = ROOT / source
        if origin.is_file():
            files[name] = origin
            continue
        for path in sorted(origin.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files[f"{name}/{path.relative_to(origin).as_posix()}"] = path
    return files


class BuildWithBundle(build_py):
    """``build_py`` that also copies the monitoring bundle into the built package, and names
    the bundle's sources as the package's so that the sdist carries them."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "guestload" / "bundle"
        shutil.rmtree(target, ignore_errors=True)
        for name, origin in bundle_files().items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, target / name)

    def get_source_files(self) -> list[str]:
        bundle = [path.relative_to(ROOT).as_posix() for path in bundle_files().values()]
        return [*super().get_source_files(), *bundle]


setup(cmdclass={"build_py": BuildWithBundle})
