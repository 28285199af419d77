"""The OCI image from ``scripts/build-image``, run as the DaemonSet runs it, serves a real VM.

It sorts after the suite's load-curve tests on purpose, so booting a VM here cannot slow
theirs. The pod's settings come from ``deploy/kubernetes/exporter/daemonset.yaml`` itself: user and
group, read-only root, capabilities (drop ALL, add what it adds), the kubelet pods folder
mounted read-only at the manifest's path, ``NODE_NAME`` set, the manifest's arguments. The
image runs under runc from a generated bundle (tests/container.py says why not ``podman run``).
Two arguments change: the listen address (a free loopback port instead of :9977) and the
socket URI template's path: a virt-launcher's daemon runs QEMU's session driver, the lab's
private daemon the system one.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from guestload_lab.image import GuestImage
from guestload_lab.libvirtd import PrivateLibvirtd
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import free_port, wait_until
from guestload_lab.vm import Hypervisor, VmSpec
from tests.container import Container, container_rootfs, image_config
from tests.exposition import metric_value

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
MANIFEST = ROOT / "deploy" / "kubernetes" / "exporter" / "daemonset.yaml"
NODE = "image-node"
NAMESPACE, VMI = "prod", "image-vm"
RUNTIME_DIR = Path("volumes") / "kubernetes.io~empty-dir" / "libvirt-runtime"


def _pod() -> tuple[dict[str, Any], dict[str, Any]]:
    """The DaemonSet's pod spec and its one container."""
    spec = yaml.safe_load(MANIFEST.read_text())["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


@pytest.fixture(scope="module")
def image() -> str:
    """The image ``scripts/test`` built in its own step (``GUESTLOAD_TEST_IMAGE``), else a
    fresh build (the Debian root is cached between runs)."""
    built = os.environ.get("GUESTLOAD_TEST_IMAGE")
    if built:
        return built
    result = subprocess.run(
        [str(ROOT / "scripts" / "build-image")],
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def rootfs(image: str) -> Iterator[Path]:
    with container_rootfs(image) as path:
        yield path


def _image_env(image: str) -> list[str]:
    return list(json.loads(image_config(image, "{{json .Config.Env}}")))


def _container_name() -> str:
    return f"guestload-test-{uuid.uuid4().hex[:8]}"


def test_the_manifest_names_the_image_of_this_version(image: str) -> None:
    _, container = _pod()
    assert image == f"localhost/guestload:{VERSION}"
    assert container["image"] == image


def test_the_image_is_labelled_and_runs_as_nobody_by_default(image: str, rootfs: Path) -> None:
    assert image_config(image, "{{.Config.User}}") == "65534:65534"
    labels = image_config(image, "{{json .Labels}}")
    for key in ("title", "version", "revision", "created", "licenses", "description"):
        assert f'"org.opencontainers.image.{key}"' in labels
    assert f'"org.opencontainers.image.version":"{VERSION}"' in labels
    entrypoint = image_config(image, "{{json .Config.Entrypoint}}")
    assert entrypoint == '["/usr/local/bin/guestload"]'


def test_the_entrypoint_answers_as_its_user_on_a_read_only_root(
    image: str, rootfs: Path, tmp_path: Path
) -> None:
    uid, gid = (int(part) for part in image_config(image, "{{.Config.User}}").split(":"))
    container = Container(
        name=_container_name(), rootfs=rootfs, image_env=_image_env(image), uid=uid, gid=gid
    )
    result = container.run(tmp_path / "version", ["/usr/local/bin/guestload", "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"guestload {VERSION}"
    probe = "id -u; id -g; grep CapEff /proc/self/status; touch /probe 2>&1 || true"
    whoami = container.run(tmp_path / "whoami", ["/bin/sh", "-c", probe])
    assert whoami.returncode == 0, whoami.stderr
    uid_seen, gid_seen, caps, touch = whoami.stdout.strip().splitlines()
    assert (uid_seen, gid_seen) == ("65534", "65534")
    assert caps.split()[1] == "0000000000000000"
    assert "Read-only file system" in touch


def test_the_image_serves_a_real_vm_as_the_daemonset_runs_it(
    image: str,
    rootfs: Path,
    daemon: PrivateLibvirtd,
    guest_images: tuple[GuestImage, GuestImage],
    tmp_path: Path,
) -> None:
    pod, spec = _pod()
    context = {**pod["securityContext"], **spec["securityContext"]}
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["DAC_OVERRIDE"]}
    (mount,) = spec["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["hostPath"]["path"] == mount["mountPath"]
    # The node's kubelet pods folder, with one launcher pod whose socket is the lab daemon's.
    pods = tmp_path / "kubelet-pods"
    socket_dir = pods / str(uuid.uuid4()) / RUNTIME_DIR
    socket_dir.mkdir(parents=True)
    os.link(daemon.socket_path, socket_dir / "virtqemud-sock")
    port = free_port()
    args = [
        arg.replace("qemu+unix:///session", "qemu+unix:///system")
        for arg in spec["args"]
        if not arg.startswith("--web.listen-address")
    ]
    args.append(f"--web.listen-address=127.0.0.1:{port}")
    container = Container(
        name=_container_name(),
        rootfs=rootfs,
        image_env=_image_env(image),
        uid=int(context["runAsUser"]),
        gid=int(context["runAsGroup"]),
        capabilities=context["capabilities"].get("add", []),
        read_only_root=context["readOnlyRootFilesystem"],
        volumes={mount["mountPath"]: (pods, bool(mount.get("readOnly")))},
        env={"NODE_NAME": NODE},
    )
    series = f'kubevirt_vmi_guest_load_1m{{name="{VMI}",namespace="{NAMESPACE}",node="{NODE}"}}'
    log_path = tmp_path / "container.log"

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                return str(reply.read().decode())
        except OSError:
            return ""

    with Hypervisor(daemon.uri) as hypervisor, ProcessRegistry() as registry:
        vm = hypervisor.create(
            VmSpec.kubevirt(NAMESPACE, VMI, str(uuid.uuid4())),
            guest_images[1],
            log_dir=tmp_path / "serial",
        )
        try:
            vm.wait_agent(timeout=120.0)
            process = registry.spawn(
                container.run_argv(tmp_path / "bundle", ["/usr/local/bin/guestload", *args]),
                log_path=log_path,
            )
            wait_until(
                lambda: metric_value(scrape(), series) is not None,
                timeout=90.0,
                interval=0.5,
                what=series,
                detail=lambda: (
                    log_path.read_text()
                    if process.poll() is None
                    else (f"exited {process.returncode}: {log_path.read_text()}")
                ),
            )
            served = metric_value(scrape(), series)
            direct = vm.guest_load()["load.1m"]
            status = Path(f"/proc/{container.pid()}/status").read_text()
        finally:
            vm.destroy()
            registry.stop(process)
            container.delete()
    assert served == pytest.approx(direct, abs=0.5)
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[0] == str(context["runAsUser"])
    assert int(fields["CapEff"], 16) == 1 << 1, "only CAP_DAC_OVERRIDE (bit 1)"
    assert fields["NoNewPrivs"].strip() == "1"
    assert '"msg":"listening"' in log_path.read_text().replace(" ", "")
