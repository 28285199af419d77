"""The lab's private libvirt daemon: isolated from the host and from a second one, and tidy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import libvirt
import pytest

from guestload_lab.image import GuestImage
from guestload_lab.libvirtd import PrivateLibvirtd
from guestload_lab.processes import pid_alive
from guestload_lab.vm import Hypervisor, VmSpec

pytestmark = pytest.mark.e2e


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_second_daemon_runs_beside_the_first_and_stops_its_qemu(
    tmp_path: Path,
    daemon: PrivateLibvirtd,
    guest_images: tuple[GuestImage, GuestImage],
) -> None:
    host_config = _digest(Path("/etc/libvirt"))
    second = PrivateLibvirtd(workdir=tmp_path / "second")
    with second, Hypervisor(second.uri) as hypervisor:
        vm = hypervisor.create(
            VmSpec(name="second-daemon-vm"), guest_images[1], log_dir=tmp_path / "serial"
        )
        qemu_pid = second.qemu_pids()["second-daemon-vm"]
        first = libvirt.open(daemon.uri)
        try:
            first_names = {domain.name() for domain in first.listAllDomains()}
        finally:
            first.close()
        second_names = {domain.name() for domain in hypervisor.connection().listAllDomains()}

        assert second_names == {"second-daemon-vm"}
        assert "second-daemon-vm" not in first_names
        assert vm.is_running()
        assert pid_alive(qemu_pid)

    assert not pid_alive(qemu_pid)
    assert second.libvirtd_pid is None
    assert not second.socket_path.exists()
    assert _digest(Path("/etc/libvirt")) == host_config


def test_test_driver_is_reachable_through_the_daemon(daemon: PrivateLibvirtd) -> None:
    connection = libvirt.open(daemon.test_driver_uri())
    try:
        names = [domain.name() for domain in connection.listAllDomains()]
    finally:
        connection.close()

    assert names == ["test"]
