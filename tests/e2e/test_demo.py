"""The one-command demo, run for real for a few refreshes, then checked for leftovers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from guestload_lab.processes import pid_alive

pytestmark = pytest.mark.e2e


def test_demo_shows_five_vms_and_cleans_up(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "guestload_lab",
            "demo",
            "--workdir",
            str(workdir),
            "--stress-workers",
            "4",
            "--duration",
            "12",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last_view = result.stdout.rsplit("guestload demo, up", 1)[-1]

    for name in ("guestload", "Prometheus", "Alertmanager"):
        assert re.search(rf"^  {name} +http://127\.0\.0\.1:\d+", last_view, re.MULTILINE)
    assert re.search(r"^demo/idle +1 +\d+\.\d\d .* ok ", last_view, re.MULTILINE), last_view
    assert re.search(r"^demo/stressed +1 +\d+\.\d\d .* ok ", last_view, re.MULTILINE), last_view
    assert re.search(r"^demo/io-stalled +1 +\d+\.\d\d .* ok ", last_view, re.MULTILINE), last_view
    assert re.search(r"^demo/blocked +1 +\d+\.\d\d .* ok ", last_view, re.MULTILINE), last_view
    assert re.search(
        r"^libvirt/no-agent +1 +- +- +- +- +- +- +- +not_configured", last_view, re.MULTILINE
    ), last_view
    header = next(line for line in last_view.splitlines() if line.startswith("VM "))
    assert header.split()[7:11] == ["busy", "iowait", "cause", "agent"]
    qemu_pid_files = list((workdir / "libvirt" / "run" / "qemu").glob("*.pid"))
    assert not any(pid_alive(int(path.read_text())) for path in qemu_pid_files)
    assert not (workdir / "libvirt" / "run" / "libvirt-sock").exists()
