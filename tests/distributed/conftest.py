"""VictoriaMetrics, vmagent and vmalert (Debian's victoria-metrics) come from the apt script."""

from __future__ import annotations

import pytest

from guestload_lab.deps import install_system_packages


@pytest.fixture(scope="session", autouse=True)
def system_packages() -> None:
    """Install the store, the agents and Prometheus if missing (about a second when present)."""
    install_system_packages()
