"""The benchmarks' peers (Prometheus, the Pushgateway, Debian's libvirt exporter) come from the
project's apt script."""

from __future__ import annotations

import pytest

from guestload_lab.deps import install_system_packages


@pytest.fixture(scope="session", autouse=True)
def system_packages() -> None:
    """Install the peers if missing (about a second when present)."""
    install_system_packages()
