"""``guestload bundle``: writes out the monitoring bundle this installation carries.

A built package holds, under ``guestload/bundle/``, the recording rules and alerts (with their
promtool tests), the PrometheusRule, the Grafana dashboard, the monitoring mixin, the alerts
table and the runbooks of its own version, and the systemd unit with its user and environment
files; a source checkout has them in ``monitoring/``, ``docs/`` and ``deploy/systemd/``
instead.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

EXIT_NO_BUNDLE = 1


def installed_bundle() -> Traversable:
    """The bundle folder inside the installed ``guestload`` package (may not exist)."""
    return files("guestload") / "bundle"


def write_bundle(bundle: Traversable, output: Path) -> list[Path]:
    """Copy every file of ``bundle`` under ``output``; returns the written paths, sorted.

    Existing files of the same names are replaced, other files in ``output`` are left alone.
    """
    written: list[Path] = []

    def copy(node: Traversable, target: Path) -> None:
        if node.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            for child in node.iterdir():
                copy(child, target / child.name)
        else:
            target.write_bytes(node.read_bytes())
            written.append(target)

    copy(bundle, output)
    return sorted(written)


def print_bundle(output: Path, bundle: Traversable | None = None) -> int:
    """Write the bundle to ``output`` and list the files; exit 1 when there is none or
    ``output`` cannot be written."""
    source = installed_bundle() if bundle is None else bundle
    if not source.is_dir():
        print(
            "guestload: error: this installation carries no monitoring bundle (a source "
            "checkout has it in monitoring/ and docs/runbooks/; built packages carry it)",
            file=sys.stderr,
        )
        return EXIT_NO_BUNDLE
    try:
        written = write_bundle(source, output)
    except OSError as error:
        print(f"guestload: error: --output: {error}", file=sys.stderr)
        return EXIT_NO_BUNDLE
    for path in written:
        print(path)
    return 0
