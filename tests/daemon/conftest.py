"""A private libvirt daemon serving only libvirt's test driver (see ``TestDriverLibvirtd``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from guestload_lab.libvirtd import TestDriverLibvirtd, short_directory


@pytest.fixture
def test_driver_daemon() -> Iterator[TestDriverLibvirtd]:
    """A running private daemon; killed and removed afterwards, whatever the test did."""
    directory = short_directory("guestload-lvd-")
    daemon = TestDriverLibvirtd(directory=directory)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.kill()
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)
