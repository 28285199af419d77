"""``/readyz`` turns 200 only once ``/metrics`` serves the first poll's data, in every format.

At 10,000 simulated VMs rendering a snapshot takes about 0.4 s after the poll ends: a
readiness that followed the poll alone answered 200 while scrapes still carried
``guestload_domains 0`` and no load series. Here the real binary is polled for readiness
every 10 ms, and the scrapes taken right after the first 200 must carry every VM's load.
"""

from __future__ import annotations

import gzip
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Exporter
from tests.exposition import metric_value

pytestmark = pytest.mark.daemon

VMS = 10_000
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture
def registry() -> Iterator[ProcessRegistry]:
    with ProcessRegistry() as processes:
        yield processes


def _scrape(url: str, *, accept: str | None, gzipped: bool) -> str:
    request = urllib.request.Request(url)  # noqa: S310 - the exporter on loopback
    if accept is not None:
        request.add_header("Accept", accept)
    if gzipped:
        request.add_header("Accept-Encoding", "gzip")
    with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
        assert reply.status == 200
        body: bytes = reply.read()
        if gzipped:
            assert reply.headers["Content-Encoding"] == "gzip"
            body = gzip.decompress(body)
        return body.decode()


def test_the_first_scrapes_after_ready_carry_every_vm(
    registry: ProcessRegistry, tmp_path: Path
) -> None:
    exporter = Exporter(
        libvirt_uri=None,
        node="readiness-node",
        workdir=tmp_path,
        registry=registry,
        interval="120s",  # one poll: every scrape below must be that poll's
        agent_timeout=None,
        extra_args=("--source", "simulated", "--simulated.vms", str(VMS)),
    )
    exporter.start()
    exporter.wait_ready(timeout=60)

    url = f"{exporter.url}/metrics"
    for accept, gzipped in [(None, False), (OPENMETRICS, False), (None, True), (OPENMETRICS, True)]:
        body = _scrape(url, accept=accept, gzipped=gzipped)
        what = f"accept={accept} gzip={gzipped}"
        assert metric_value(body, "guestload_domains") == VMS, what
        assert metric_value(body, "guestload_polls_total") == 1.0, what
        loads = [
            line for line in body.splitlines() if line.startswith("kubevirt_vmi_guest_load_1m{")
        ]
        assert len(loads) == VMS, what
    assert exporter.process.poll() is None, exporter.log()
