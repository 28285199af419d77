"""A guest whose agent answers as the Windows guest agent does, read through libvirt.

One 1-vCPU guest runs the lab's Windows-like agent (``AgentKind.WINDOWS``). Its first
``guest-get-load`` is read as soon as the agent answers, then ``stress-ng --cpu 8`` starts
through ``guest-exec``: eight busy threads on one vCPU, one running and seven waiting. The
Windows semantics (an average of the threads waiting, 5-s samples, from 0 at the first call)
put load.1m near 7 after a few minutes, never near 8. The file sorts before the session's
scenarios on purpose: its VM runs and is gone before those boot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest

from guestload_lab.image import GuestImage
from guestload_lab.libvirtd import PrivateLibvirtd
from guestload_lab.vm import AgentKind, Hypervisor, LabVm, VmSpec
from guestload_lab.windows_agent import OS_ID, UNSUPPORTED_ERROR

pytestmark = pytest.mark.e2e

WORKERS = 8
WAITING = WORKERS - 1
"""One vCPU runs one worker; the others wait."""
SETTLED_SECONDS = 180.0
"""How long the stress runs before load.1m is judged: 7 * (1 - e^-3) = 6.65 with 7 waiting,
8 * (1 - e^-3) = 7.60 if the running worker were counted."""
SAMPLE_SECONDS = 5.0


@dataclass
class WindowsLike:
    vm: LabVm
    first_load: dict[str, float]
    stress_started: float


@pytest.fixture(scope="module")
def windows_like(
    daemon: PrivateLibvirtd,
    guest_images: tuple[GuestImage, GuestImage],
    lab_dir: Path,
    timings: dict[str, float],
) -> Iterator[WindowsLike]:
    """Boots the guest, reads its first load, starts the stress."""
    full, _ = guest_images
    with Hypervisor(daemon.uri) as hypervisor:
        vm = hypervisor.create(
            VmSpec(name="windows-like", agent=AgentKind.WINDOWS), full, log_dir=lab_dir / "win"
        )
        try:
            timings["boot the Windows-like guest, agent up"] = vm.wait_agent(timeout=180.0)
            first_load = vm.guest_load()
            vm.start_stress(WORKERS)
            yield WindowsLike(vm=vm, first_load=first_load, stress_started=time.monotonic())
        finally:
            vm.destroy()


def test_os_info_names_windows(windows_like: WindowsLike) -> None:
    info = windows_like.vm.domain().guestInfo(libvirt.VIR_DOMAIN_GUEST_INFO_OS, 0)
    assert info["os.id"] == OS_ID
    assert info["os.name"] == "Microsoft Windows"
    assert info["os.version-id"] == "2022"
    assert info["os.kernel-release"] == "20348"
    assert info["os.machine"] == "x86_64"


def test_cpustats_passthrough_gets_the_windows_unsupported_error(
    windows_like: WindowsLike,
) -> None:
    with pytest.raises(libvirt.libvirtError) as raised:
        libvirt_qemu.qemuAgentCommand(
            windows_like.vm.domain(), '{"execute":"guest-get-cpustats"}', 10, 0
        )
    assert UNSUPPORTED_ERROR in str(raised.value)


def test_load_averages_the_waiting_threads_from_zero(
    windows_like: WindowsLike, timings: dict[str, float]
) -> None:
    vm = windows_like.vm
    assert windows_like.first_load == {"load.1m": 0.0, "load.5m": 0.0, "load.15m": 0.0}
    highest = 0.0
    load = vm.guest_load()
    while (elapsed := time.monotonic() - windows_like.stress_started) < SETTLED_SECONDS:
        load = vm.guest_load()
        highest = max(highest, load["load.1m"])
        if elapsed > 60.0:
            # Already rising: it started at 0 and counts the waiting workers.
            assert load["load.1m"] > 2.0, f"{elapsed:.0f} s: {load}"
        time.sleep(SAMPLE_SECONDS)
    load = vm.guest_load()
    highest = max(highest, load["load.1m"])
    timings[f"Windows-like, stress-ng --cpu 8: load.1m after {SETTLED_SECONDS:g} s"] = load[
        "load.1m"
    ]
    expected = WAITING * (1 - math.exp(-SETTLED_SECONDS / 60))
    assert 6.0 < load["load.1m"] <= expected + 0.5, load
    assert highest <= expected + 0.5, "counted the running worker"
    assert load["load.15m"] < load["load.5m"] < load["load.1m"]
