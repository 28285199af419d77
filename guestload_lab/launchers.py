"""Fake virt-launcher pods: one private libvirt daemon each, its socket where KubeVirt puts it.

Seen from the node, a virt-launcher's libvirt socket sits in the pod's ``libvirt-runtime``
emptyDir: ``<kubelet>/pods/<pod-uid>/volumes/kubernetes.io~empty-dir/libvirt-runtime/
virtqemud-sock`` (a path too long for a unix socket address, as on a real node). A
:class:`LauncherPod` is a :class:`~guestload_lab.libvirtd.TestDriverLibvirtd` running one
KubeVirt-named domain, its socket moved to that path. Pods can be hung, resumed, crashed,
restarted and deleted as a kubelet and a bad day would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt

from guestload_lab.libvirtd import TestDriverLibvirtd, short_directory

RUNTIME_DIR = Path("volumes") / "kubernetes.io~empty-dir" / "libvirt-runtime"
"""A launcher pod's libvirt runtime folder, under ``<kubelet>/pods/<pod-uid>/``."""
SOCKET_NAME = "virtqemud-sock"
URI_TEMPLATE = "test+unix:///default?socket={socket}"
"""``--libvirt.socket-uri-template`` for the pods' test-driver daemons."""


def kubelet_socket_glob(kubelet_root: Path) -> str:
    """``--libvirt.socket-glob`` for every launcher pod under ``kubelet_root``."""
    return str(kubelet_root / "pods" / "*" / RUNTIME_DIR / SOCKET_NAME)


class LauncherPod:
    """A private daemon posing as one virt-launcher pod running VMI ``namespace/vmi``."""

    def __init__(self, *, kubelet_root: Path, namespace: str, vmi: str) -> None:
        self.namespace = namespace
        self.vmi = vmi
        self.pod_dir = kubelet_root / "pods" / str(uuid.uuid4())
        self.socket_path = self.pod_dir / RUNTIME_DIR / SOCKET_NAME
        self.domain_uuid = str(uuid.uuid4())
        # The daemon binds in a short directory of its own; its socket is then moved into
        # the pod's runtime directory (a bound socket keeps listening when renamed).
        self.daemon = TestDriverLibvirtd(directory=short_directory("guestload-kv-"))
        # The test driver's default instance lives while a connection holds it: this one
        # plays virt-launcher's own connection.
        self._launcher_connection: libvirt.virConnect | None = None

    @property
    def pid(self) -> int | None:
        """The daemon's process id while it runs."""
        return self.daemon.libvirtd_pid

    def start(self) -> None:
        """Start the daemon, run the VMI's domain in it, and publish its socket."""
        self.daemon.start()
        connection = libvirt.open(self.daemon.uri)
        self._launcher_connection = connection
        connection.lookupByName("test").destroy()  # the test driver's own domain
        connection.createXML(self._domain_xml(), 0)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.daemon.socket_path, self.socket_path)

    def hang(self) -> None:
        """SIGSTOP the daemon: it accepts nothing and answers nothing."""
        self.daemon.pause()

    def resume(self) -> None:
        """SIGCONT a hung daemon."""
        self.daemon.resume()

    def crash(self) -> None:
        """Kill the daemon; its socket file stays behind, as after a crash."""
        self.daemon.kill()
        self._drop_launcher_connection()

    def delete(self) -> None:
        """Kill the daemon and remove the pod's directory, as the kubelet does."""
        self.daemon.kill()
        self._drop_launcher_connection()
        shutil.rmtree(self.pod_dir, ignore_errors=True)

    def cleanup(self) -> None:
        self.delete()
        shutil.rmtree(self.daemon.directory, ignore_errors=True)

    def _drop_launcher_connection(self) -> None:
        connection, self._launcher_connection = self._launcher_connection, None
        if connection is not None:
            with contextlib.suppress(libvirt.libvirtError):
                connection.close()

    def _domain_xml(self) -> str:
        return f"""<domain type='test'>
  <name>{self.namespace}_{self.vmi}</name>
  <uuid>{self.domain_uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type>hvm</type></os>
  <metadata><kubevirt xmlns="http://kubevirt.io"><uid>{uuid.uuid4()}</uid></kubevirt></metadata>
</domain>"""


@contextlib.contextmanager
def launcher_pods(count: int, kubelet_root: Path, *, namespace: str) -> Iterator[list[LauncherPod]]:
    """``count`` running pods with VMIs ``vm-000``... (started four at a time); every daemon is
    stopped at the end, hung ones too."""
    pods = [
        LauncherPod(kubelet_root=kubelet_root, namespace=namespace, vmi=f"vm-{index:03d}")
        for index in range(count)
    ]
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(LauncherPod.start, pods))
        yield pods
    finally:
        for pod in pods:
            if pod.pid is not None:
                pod.resume()
            pod.cleanup()
