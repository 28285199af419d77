"""The release wheel, installed alone into a clean virtualenv (no checkout on the module path),
serves a real VM's guest load and OS from the lab's private libvirt daemon.

The lab's guest is an initramfs without os-release: its qemu-ga answers guest-get-osinfo
with the kernel's uname alone, so the OS series has the kernel release and machine, no id."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from guestload_lab.image import GuestImage
from guestload_lab.libvirtd import PrivateLibvirtd
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Exporter, wait_until
from guestload_lab.vm import Hypervisor, VmSpec
from tests.exposition import metric_value, sample_lines
from tests.release import build_release, install_wheel

pytestmark = pytest.mark.e2e

NODE = "wheel-node"
VM_NAME = "wheel-vm"
NO_CHECKOUT = {"PYTHONPATH": ""}
"""An empty PYTHONPATH adds nothing: the wheel's venv finds only what it installed."""


def _os_series(body: str) -> list[dict[str, str]]:
    """The label sets of the wheel VM's guestload_guest_os_info samples (each checked to be
    1); other tests' VMs may share the daemon."""
    found = []
    for family in text_string_to_metric_families(body):
        if family.name == "guestload_guest_os_info":
            for sample in family.samples:
                assert sample.value == 1.0, sample
                if sample.labels.get("name") == VM_NAME:
                    found.append(dict(sample.labels))
    return found


def test_the_wheel_alone_serves_a_real_vms_load_and_os(
    daemon: PrivateLibvirtd, guest_images: tuple[GuestImage, GuestImage], tmp_path: Path
) -> None:
    release = build_release(tmp_path / "dist")
    venv_bin = install_wheel(release.wheel, tmp_path / "venv")
    imported = subprocess.run(
        [str(venv_bin / "python"), "-c", "import guestload; print(guestload.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=NO_CHECKOUT,
    )
    assert imported.stdout.startswith(str(tmp_path / "venv" / "lib")), imported.stdout
    series = f'kubevirt_vmi_guest_load_1m{{name="{VM_NAME}",namespace="libvirt",node="{NODE}"}}'
    with Hypervisor(daemon.uri) as hypervisor, ProcessRegistry() as registry:
        vm = hypervisor.create(VmSpec(name=VM_NAME), guest_images[1], log_dir=tmp_path / "serial")
        try:
            vm.wait_agent(timeout=120.0)
            exporter = Exporter(
                libvirt_uri=daemon.uri,
                node=NODE,
                workdir=tmp_path / "exporter",
                registry=registry,
                interval="1s",
                agent_timeout="500ms",
                command=[str(venv_bin / "guestload")],
                env=NO_CHECKOUT,
            )
            exporter.start()
            wait_until(
                lambda: metric_value(exporter.get("/metrics")[1], series) is not None,
                timeout=60.0,
                interval=0.5,
                what=series,
                detail=exporter.log,
            )
            wait_until(
                lambda: _os_series(exporter.get("/metrics")[1]),
                timeout=30.0,
                interval=0.5,
                what="guestload_guest_os_info",
                detail=exporter.log,
            )
            body = exporter.get("/metrics")[1]
            served = metric_value(body, series)
            direct = vm.guest_load()["load.1m"]
            exit_code, uname = vm.run_in_guest(["/bin/busybox", "uname", "-r", "-m"])
        finally:
            vm.destroy()
    assert served is not None
    assert served == pytest.approx(direct, abs=0.5)
    assert exit_code == 0
    kernel_release, machine = uname.split()
    assert _os_series(body) == [
        {
            "id": "",
            "kernel_release": kernel_release,
            "machine": machine,
            "name": VM_NAME,
            "namespace": "libvirt",
            "node": NODE,
            "pretty_name": "",
            "variant_id": "",
            "version_id": "",
        }
    ]
    assert machine == "x86_64"
    os_state = 'query="osinfo",state="ok"'
    assert any(
        os_state in line and f'name="{VM_NAME}"' in line
        for line in sample_lines(body, "guestload_agent_state{")
    ), body
    assert f"version={release.wheel.name.split('-')[1]}" in exporter.log()
