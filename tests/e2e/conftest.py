"""Real VMs for the end-to-end suite, booted once per session.

The session installs what is missing, builds the guest image, starts a private libvirt
daemon and boots every VM the scenarios need in parallel. The two stress VMs start their
``stress-ng`` through the guest agent as soon as they answer, so their load climbs while
the quicker tests run. If the host cannot run a VM, every test fails with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestload_lab.deps import ensure_dependencies
from guestload_lab.image import GuestImage, build_image
from guestload_lab.libvirtd import PrivateLibvirtd
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Monitoring, WebhookReceiver
from guestload_lab.vm import Hypervisor, LabVm, wait_all_agents
from tests.e2e.lab import (
    HEAVY_WORKERS,
    NODE,
    STRESS_WORKERS,
    STRESSED,
    VM_SPECS,
    WITH_AGENT,
    Lab,
)

TIMINGS = pytest.StashKey[dict[str, float]]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``late`` run last: they wait on a window their fixtures opened early."""
    items.sort(key=lambda item: item.get_closest_marker("late") is not None)


@pytest.fixture(scope="session")
def timings(request: pytest.FixtureRequest) -> dict[str, float]:
    """Durations worth reporting, printed at the end of the run."""
    recorded: dict[str, float] = {}
    request.config.stash[TIMINGS] = recorded
    return recorded


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    recorded = config.stash.get(TIMINGS, None)
    if recorded:
        terminalreporter.section("end-to-end timings (seconds)")
        for name, seconds in recorded.items():
            terminalreporter.write_line(f"{name:<40} {seconds:8.1f}")


@pytest.fixture(scope="session")
def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Short: unix socket paths must stay under 108 bytes.
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="session")
def guest_images(timings: dict[str, float]) -> tuple[GuestImage, GuestImage]:
    """The image with stress-ng and the slim one without it."""
    started = time.monotonic()
    parts = ensure_dependencies()
    timings["install + fetch guest parts"] = time.monotonic() - started
    started = time.monotonic()
    images = build_image(parts), build_image(parts, with_stress=False)
    timings["initramfs builds (or cache hits)"] = time.monotonic() - started
    return images


@pytest.fixture(scope="session")
def daemon(lab_dir: Path, timings: dict[str, float]) -> Iterator[PrivateLibvirtd]:
    started = time.monotonic()
    with PrivateLibvirtd(workdir=lab_dir / "libvirt") as private:
        timings["libvirtd start"] = time.monotonic() - started
        yield private


@pytest.fixture(scope="session")
def lab(
    lab_dir: Path,
    daemon: PrivateLibvirtd,
    guest_images: tuple[GuestImage, GuestImage],
    timings: dict[str, float],
) -> Iterator[Lab]:
    """Boots every VM in parallel, then starts stress in the two stress VMs."""
    full, slim = guest_images
    with Hypervisor(daemon.uri) as hypervisor:
        started = time.monotonic()
        vms: dict[str, LabVm] = {}
        try:
            for key, spec in VM_SPECS.items():
                image = full if key in STRESSED else slim
                vms[key] = hypervisor.create(spec, image, log_dir=lab_dir / "serial")
            ready = wait_all_agents([vms[key] for key in WITH_AGENT], timeout=180.0)
            for key in ("silent", "no_channel"):
                vms[key].wait_booted(timeout=120.0)
            timings[f"boot {len(vms)} VMs in parallel, all agents up"] = time.monotonic() - started
            timings["boot to agent, fastest VM"] = min(ready.values())
            result = Lab(
                directory=lab_dir,
                daemon=daemon,
                hypervisor=hypervisor,
                image=full,
                slim_image=slim,
                vms=vms,
                timings=timings,
            )
            for key, workers in zip(STRESSED, (STRESS_WORKERS, HEAVY_WORKERS), strict=True):
                vm = vms[key]
                result.load_before_stress[key] = vm.guest_load()["load.1m"]
                vm.start_stress(workers)
                result.stress_started[key] = time.monotonic()
            yield result
        finally:
            for vm in vms.values():
                vm.destroy()


@pytest.fixture(scope="session")
def monitoring(lab: Lab, timings: dict[str, float]) -> Iterator[Monitoring]:
    with ProcessRegistry() as registry, WebhookReceiver() as webhook:
        started = time.monotonic()
        monitoring = Monitoring.start(
            libvirt_uri=lab.daemon.uri,
            node=NODE,
            workdir=lab.directory / "monitoring",
            registry=registry,
            webhook=webhook,
        )
        timings["monitoring chain up, first scrape"] = time.monotonic() - started
        yield monitoring
