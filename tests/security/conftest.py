"""Real processes for the security and fault tests: ``guestload serve`` and a libvirt daemon.

The exporters are :class:`guestload_lab.services.Exporter` processes and the daemon is a
:class:`guestload_lab.libvirtd.TestDriverLibvirtd` (libvirt's test driver alone) with the
socket group and permissions the test asks for. Every process is stopped by its id at the end
of the test, whatever happened.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guestload_lab.libvirtd import TestDriverLibvirtd, short_directory
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Exporter

GUESTLOAD = Path(sys.executable).parent / "guestload"
START_TIMEOUT_SECONDS = 20.0
NODE = "test-node"


@dataclass
class Exporters:
    """Starts ``guestload serve`` processes in ``folder``; all stopped at the end of the test."""

    folder: Path
    registry: ProcessRegistry
    started: list[Exporter] = field(default_factory=list)

    def start(
        self,
        *args: str,
        user: str | None = None,
        group: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Exporter:
        """``guestload serve`` polling every second with ``args`` added to its flags."""
        exporter = Exporter(
            libvirt_uri=None,
            node=NODE,
            workdir=self.folder,
            registry=self.registry,
            interval="1s",
            agent_timeout="500ms",
            extra_args=args,
            name=f"guestload-{len(self.started)}",
            user=user,
            group=group,
            env=env,
        )
        self.started.append(exporter)
        exporter.start(START_TIMEOUT_SECONDS)
        return exporter


@pytest.fixture
def exporters(tmp_path: Path) -> Iterator[Exporters]:
    tmp_path.chmod(0o755)  # readable for an exporter running as another user
    with ProcessRegistry() as registry:
        yield Exporters(folder=tmp_path, registry=registry)


DaemonFactory = Callable[..., TestDriverLibvirtd]


@pytest.fixture
def daemon_folder() -> Iterator[Path]:
    """A short private folder (unix socket paths are limited to 107 bytes), world-traversable."""
    folder = short_directory("guestload-sec-")
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def make_daemon(daemon_folder: Path) -> Iterator[DaemonFactory]:
    """Build (not start) test-driver daemons in ``daemon_folder``; all stopped afterwards."""
    daemons: list[TestDriverLibvirtd] = []

    def make(**options: str) -> TestDriverLibvirtd:
        daemon = TestDriverLibvirtd(directory=daemon_folder, **options)
        daemons.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in daemons:
            daemon.kill()
            daemon.stop()


def command_output(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)
