"""Running the OCI image built by ``scripts/build-image`` with an OCI runtime, as a kubelet would.

``podman run`` cannot start containers on the machines the tests run on: crun stops at
``setrlimit`` (``RLIMIT_NOFILE``: operation not permitted) and refuses the hybrid cgroup
layout; podman with runc stops at the ``RLIMIT_NPROC`` it always asks for. runc itself runs a
container when its bundle asks for no rlimits and no cgroup resources. So the tests write the
bundle a container runtime would write for the pod: a container's root file system from the
image (``buildah from`` and ``buildah mount``), its entrypoint and environment, and the pod's
``securityContext`` (user and group, read-only root, capability sets, ``no_new_privs``) and
volumes; then ``runc run``. The
network namespace is the host's, as with ``hostNetwork``, so the test scrapes it on loopback.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def container_rootfs(image: str) -> Iterator[Path]:
    """A new container's root file system from ``image``: the image's layers under a writable
    layer of its own (where the runtime makes mount points), as a runtime's storage gives."""
    created = subprocess.run(
        ["buildah", "from", "--pull-never", image], capture_output=True, text=True, check=True
    )
    container = created.stdout.strip()
    try:
        mounted = subprocess.run(
            ["buildah", "mount", container], capture_output=True, text=True, check=True
        )
        yield Path(mounted.stdout.strip())
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def image_config(image: str, template: str) -> str:
    """One field of the image's configuration, by a Go template (``{{.Config.User}}``)."""
    return subprocess.run(
        ["podman", "image", "inspect", "--format", template, image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@dataclass(frozen=True)
class Container:
    """One container of a pod: an image's root file system and the pod's security settings."""

    name: str
    rootfs: Path
    image_env: Sequence[str]
    """The image's ``Env`` (``NAME=value``), before the pod's."""
    uid: int
    gid: int
    capabilities: Sequence[str] = ()
    """Capabilities kept (``securityContext.capabilities.add`` after ``drop: [ALL]``)."""
    read_only_root: bool = True
    volumes: Mapping[str, tuple[Path, bool]] = field(default_factory=dict)
    """Container path -> (host path, read-only)."""
    env: Mapping[str, str] = field(default_factory=dict)

    def config(self, args: Sequence[str]) -> dict[str, Any]:
        """The OCI runtime configuration (``config.json``) running ``args``."""
        caps = [f"CAP_{name.upper()}" for name in self.capabilities]
        kept = caps if self.uid == 0 else []
        mounts: list[dict[str, Any]] = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",  # noqa: S108 - the container's own tmpfs
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
        ]
        for target, (source, read_only) in self.volumes.items():
            options = ["rbind", "rprivate", "ro" if read_only else "rw"]
            mounts.append(
                {"destination": target, "type": "bind", "source": str(source), "options": options}
            )
        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": self.uid, "gid": self.gid, "additionalGids": []},
                "args": list(args),
                "env": [*self.image_env, *(f"{k}={v}" for k, v in self.env.items())],
                "cwd": "/",
                "capabilities": {
                    "bounding": caps,
                    "effective": kept,
                    "permitted": kept,
                    "inheritable": [],
                    "ambient": [],
                },
                "noNewPrivileges": True,
            },
            "root": {"path": str(self.rootfs), "readonly": self.read_only_root},
            "hostname": self.name,
            "mounts": mounts,
            "linux": {
                "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"],
            },
        }

    def bundle(self, directory: Path, args: Sequence[str]) -> Path:
        """Write the bundle for ``args`` into ``directory``; returns it."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config(args), indent=1))
        return directory

    def run_argv(self, directory: Path, args: Sequence[str]) -> list[str]:
        """``runc run`` in the foreground (it forwards signals to the container's process)."""
        return ["runc", "run", "--bundle", str(self.bundle(directory, args)), self.name]

    def run(self, directory: Path, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run ``args`` to the end; the container is removed afterwards."""
        try:
            return subprocess.run(
                self.run_argv(directory, args),
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        finally:
            self.delete()

    def pid(self) -> int:
        """The container's first process, as the runtime reports it."""
        state = subprocess.run(
            ["runc", "state", self.name], capture_output=True, text=True, check=True
        )
        return int(json.loads(state.stdout)["pid"])

    def delete(self) -> None:
        subprocess.run(["runc", "delete", "--force", self.name], capture_output=True, check=False)
