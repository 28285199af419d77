"""The release wheel, installed alone into a clean virtualenv (no checkout on the module path),
serves a real VM's guest load from the lab's private libvirt daemon."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from guestload_lab.image import GuestImage
from guestload_lab.libvirtd import PrivateLibvirtd
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Exporter, wait_until
from guestload_lab.vm import Hypervisor, VmSpec
from tests.exposition import metric_value
from tests.release import build_release, install_wheel

pytestmark = pytest.mark.e2e

NODE = "wheel-node"
VM_NAME = "wheel-vm"
NO_CHECKOUT = {"PYTHONPATH": ""}
"""An empty PYTHONPATH adds nothing: the wheel's venv finds only what it installed."""


def test_the_wheel_alone_serves_a_real_vms_load(
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
            served = metric_value(exporter.get("/metrics")[1], series)
            direct = vm.guest_load()["load.1m"]
        finally:
            vm.destroy()
    assert served is not None
    assert served == pytest.approx(direct, abs=0.5)
    assert f"version={release.wheel.name.split('-')[1]}" in exporter.log()
