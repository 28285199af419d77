"""Real processes for the security and fault tests: ``guestload serve`` and a libvirt daemon.

The exporters are :class:`guestload_lab.services.Exporter` processes and the daemon is a
:class:`guestload_lab.libvirtd.TestDriverLibvirtd` (libvirt's test driver alone) with the
socket group and permissions the test asks for. Every process is stopped by its id at the end
of the test, whatever happened.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestload_lab.libvirtd import TestDriverLibvirtd, short_directory
from guestload_lab.processes import ProcessRegistry
from tests.security.exporters import DaemonFactory, Exporters


@pytest.fixture
def exporters(tmp_path: Path) -> Iterator[Exporters]:
    tmp_path.chmod(0o755)  # readable for an exporter running as another user
    with ProcessRegistry() as registry:
        yield Exporters(folder=tmp_path, registry=registry)


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
