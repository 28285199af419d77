"""The release artefacts as a user gets them: built by ``scripts/release``, the wheel
installed alone into a clean virtualenv outside the checkout."""

from __future__ import annotations

import os
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class Release:
    """What ``scripts/release`` built, and what it printed (``twine check`` included)."""

    wheel: Path
    sdist: Path
    output: str

    def wheel_names(self) -> list[str]:
        with zipfile.ZipFile(self.wheel) as archive:
            return archive.namelist()


def build_release(outdir: Path) -> Release:
    """Run ``scripts/release --outdir outdir``; an error with its output if it fails."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "release"), "--outdir", str(outdir)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    (wheel,) = outdir.glob("guestload-*.whl")
    (sdist,) = outdir.glob("guestload-*.tar.gz")
    return Release(wheel=wheel, sdist=sdist, output=output)


def install_wheel(wheel: Path, venv: Path) -> Path:
    """A new virtualenv at ``venv`` with only ``wheel`` (and its dependencies); its bin folder.

    Without the caller's ``PYTHONPATH``: a checkout on it would stand in for the wheel.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        cwd=venv,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return venv / "bin"
