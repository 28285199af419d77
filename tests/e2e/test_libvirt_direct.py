"""The chain below guestload, read directly: guest -> qemu-ga -> QEMU -> libvirt.

These pin the facts the exporter relies on, on this machine's real stack.
"""

from __future__ import annotations

import re
import time

import libvirt
import pytest

from guestload_lab.waiting import wait_until
from tests.e2e.lab import Lab

pytestmark = pytest.mark.e2e

LOAD_KEYS = {"load.1m", "load.5m", "load.15m"}


def _libvirt_error(call: object) -> libvirt.libvirtError:
    assert callable(call)
    with pytest.raises(libvirt.libvirtError) as caught:
        call()
    return caught.value


def test_idle_guest_reports_its_load_through_libvirt(lab: Lab) -> None:
    started = time.monotonic()
    load = lab.vms["idle"].guest_load()
    elapsed = time.monotonic() - started

    assert set(load) == LOAD_KEYS
    assert all(0.0 <= value < 3.0 for value in load.values()), load
    assert elapsed < 2.0


def test_guest_exec_runs_a_command_in_the_guest(lab: Lab) -> None:
    exit_code, output = lab.vms["idle"].run_in_guest(["/bin/busybox", "cat", "/proc/loadavg"])

    assert exit_code == 0
    assert re.fullmatch(r"\d+\.\d\d \d+\.\d\d \d+\.\d\d \d+/\d+ \d+\n", output), output


def test_old_agent_lacks_guest_get_load(lab: Lab) -> None:
    vm = lab.vms["old_agent"]
    vm.agent_command("guest-ping")  # the agent itself answers

    error = _libvirt_error(vm.guest_load)

    assert error.get_error_code() == libvirt.VIR_ERR_AGENT_COMMAND_FAILED
    assert "guest-get-load" in str(error)


def test_domain_without_channel_has_no_agent_configured(lab: Lab) -> None:
    error = _libvirt_error(lab.vms["no_channel"].guest_load)

    assert error.get_error_code() == libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED
    assert "not configured" in str(error)


def test_channel_without_agent_is_not_connected(lab: Lab) -> None:
    error = _libvirt_error(lab.vms["silent"].guest_load)

    assert error.get_error_code() == libvirt.VIR_ERR_AGENT_UNRESPONSIVE
    assert "not connected" in str(error)


def test_stress_started_through_the_agent_raises_the_guest_load(lab: Lab) -> None:
    vm = lab.vms["stress"]
    before = lab.load_before_stress["stress"]

    risen = wait_until(
        lambda: (load := vm.guest_load()["load.1m"]) >= before + 2.0 and load,
        timeout=max(5.0, 120.0 - (time.monotonic() - lab.stress_started["stress"])),
        interval=2.0,
        what=f"load.1m of {vm.name} 2 above {before}",
    )

    assert risen >= before + 2.0
