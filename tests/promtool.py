"""``promtool check metrics`` on scrape bodies (Debian's prometheus package provides promtool)."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def promtool_verdicts(bodies: list[str] | list[bytes]) -> list[str]:
    """The problems promtool reports for each body that fails its check (empty when all pass)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not installed: these tests need Debian's prometheus package "
            "(scripts/install-system-deps installs it)"
        )
    problems = []
    for body in bodies:
        data = body.encode() if isinstance(body, str) else body
        result = subprocess.run(
            [promtool, "check", "metrics"], input=data, capture_output=True, check=False
        )
        if result.returncode != 0:
            problems.append(result.stderr.decode() + result.stdout.decode() + repr(data[:2000]))
    return problems
