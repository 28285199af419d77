"""``guestload serve --collector.interval 5s`` and no other timing flag: it starts and serves.

The agent timeout and back-off left out follow the interval (1.25s and 15m at 5s): against
libvirt's test driver directly and through a private daemon's socket, behind basic
authentication, and against a private libvirtd running a real VM whose agent answers.
"""

from __future__ import annotations

import base64
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from guestload_lab.deps import ensure_dependencies
from guestload_lab.image import build_image
from guestload_lab.libvirtd import PrivateLibvirtd, TestDriverLibvirtd, short_directory
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Exporter
from guestload_lab.vm import Hypervisor, VmSpec
from guestload_lab.waiting import wait_until
from tests.exposition import metric_value

pytestmark = pytest.mark.daemon

NODE = "short-interval-node"
INTERVAL = "5s"
DERIVED = "interval=5s agent_timeout=1.25s agent_backoff_max=15m"
"""What the start-up log line says the exporter chose."""
TEST_DOMAIN_STATE = (
    f'guestload_agent_state{{name="test",namespace="libvirt",node="{NODE}",query="load",'
    'state="unsupported"}'
)
USER = "prometheus"
PASSWORD = "short interval"  # noqa: S105 - the test's own made-up password


@pytest.fixture
def registry() -> Iterator[ProcessRegistry]:
    with ProcessRegistry() as processes:
        yield processes


def start(uri: str, *extra: str, registry: ProcessRegistry, workdir: Path) -> Exporter:
    """``guestload serve`` on ``uri`` with ``--collector.interval 5s`` as its only timing flag."""
    exporter = Exporter(
        libvirt_uri=uri,
        node=NODE,
        workdir=workdir,
        registry=registry,
        interval=INTERVAL,
        agent_timeout=None,
        extra_args=extra,
    )
    assert not any("timeout" in arg or "backoff" in arg for arg in exporter.argv())
    exporter.start()
    assert DERIVED in exporter.log(), exporter.log()
    return exporter


@pytest.mark.parametrize("through_daemon", [False, True], ids=["direct", "private-daemon"])
def test_the_test_driver_is_served(
    through_daemon: bool,
    registry: ProcessRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    uri = "test:///default"
    if through_daemon:
        daemon: TestDriverLibvirtd = request.getfixturevalue("test_driver_daemon")
        uri = daemon.uri
    exporter = start(uri, registry=registry, workdir=tmp_path)
    exporter.wait_ready(timeout=15)
    body = exporter.scrape_text()
    assert metric_value(body, "guestload_libvirt_up") == 1.0
    assert metric_value(body, TEST_DOMAIN_STATE) == 1.0
    assert exporter.process.poll() is None, exporter.log()


def _get(url: str, *, authorization: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url)  # noqa: S310 - the exporter on loopback
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), ""
    except OSError:
        return 0, ""


def test_basic_authentication_is_served(registry: ProcessRegistry, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  {USER}: '{hashed}'\n")
    exporter = start(
        "test:///default", "--web.config.file", str(config), registry=registry, workdir=tmp_path
    )
    credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    authorization = f"Basic {credentials}"

    wait_until(
        lambda: _get(f"{exporter.url}/readyz", authorization=authorization)[0] == 200,
        timeout=15,
        interval=0.05,
        what="/readyz 200 with the password",
        detail=exporter.log,
    )
    status, body = _get(f"{exporter.url}/metrics", authorization=authorization)
    assert status == 200
    assert metric_value(body, "guestload_libvirt_up") == 1.0
    assert metric_value(body, TEST_DOMAIN_STATE) == 1.0
    assert _get(f"{exporter.url}/metrics", authorization=None)[0] == 401


@pytest.fixture
def qemu_daemon() -> Iterator[PrivateLibvirtd]:
    """A private libvirtd with the QEMU driver (the lab's, as the end-to-end suite uses)."""
    folder = short_directory("guestload-si-")
    try:
        with PrivateLibvirtd(workdir=folder) as daemon:
            yield daemon
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_real_vm_under_a_private_libvirtd_is_served(
    qemu_daemon: PrivateLibvirtd, registry: ProcessRegistry, tmp_path: Path
) -> None:
    image = build_image(ensure_dependencies(), with_stress=False)
    with Hypervisor(qemu_daemon.uri) as hypervisor:
        vm = hypervisor.create(
            VmSpec(name="short-interval", memory_mib=96), image, log_dir=tmp_path / "serial"
        )
        try:
            vm.wait_agent(timeout=120)
            exporter = start(qemu_daemon.uri, registry=registry, workdir=tmp_path)
            started = time.monotonic()
            exporter.wait_ready(timeout=30)
            load = (
                f'kubevirt_vmi_guest_load_1m{{name="short-interval",namespace="libvirt",'
                f'node="{NODE}"}}'
            )

            def loaded() -> str | None:
                body = exporter.scrape_text()
                return body if metric_value(body, load) is not None else None

            body = wait_until(
                loaded, timeout=30, interval=0.2, what="the VM's load", detail=exporter.log
            )
            ok = (
                f'guestload_agent_state{{name="short-interval",namespace="libvirt",'
                f'node="{NODE}",query="load",state="ok"}}'
            )
            assert metric_value(body, ok) == 1.0
            assert metric_value(body, "guestload_libvirt_up") == 1.0
            # A second poll, five seconds after the first, still reads the agent.
            wait_until(
                lambda: (metric_value(exporter.scrape_text(), "guestload_polls_total") or 0) >= 2,
                timeout=15,
                interval=0.2,
                what="a second poll",
                detail=exporter.log,
            )
            assert time.monotonic() - started < 30
            assert metric_value(exporter.scrape_text(), ok) == 1.0
            assert "Traceback" not in exporter.log()
        finally:
            vm.destroy()
