"""What the lab needs from Debian: system packages, a guest kernel and an old guest agent.

The system packages come from the project's ``scripts/install-system-deps``. The guest kernel
(bookworm's ``linux-image-6.1.0-<N>-cloud-amd64``) and bookworm's qemu-guest-agent 7.2 (no
``guest-get-load``: the "agent too old" case) are downloaded with ``apt-get download`` and
unpacked with ``dpkg-deb -x`` into a cache folder; nothing of them is installed on the host.
Every step is idempotent and takes well under a second when its result is already there.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE_DIR = Path(os.environ.get("GUESTLOAD_LAB_CACHE", "/var/cache/guestload-lab"))
"""Downloads and unpacked packages; ``GUESTLOAD_LAB_CACHE`` overrides it."""

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-system-deps"

KERNEL_PACKAGE = re.compile(r"^linux-image-(6\.1\.0-(\d+)-cloud-amd64)$")
OLD_AGENT_PACKAGE = "qemu-guest-agent/bookworm"
_DONE_MARKER = ".unpacked"


class DependencyError(RuntimeError):
    """A package could not be installed, found or unpacked."""


@dataclass(frozen=True, slots=True)
class GuestParts:
    """The host files a guest image is made of."""

    kernel: Path
    """The guest kernel image (bzImage)."""
    modules_dir: Path
    """The kernel's ``lib/modules/<release>`` folder (uncompressed ``.ko`` files)."""
    old_agent: Path
    """qemu-ga 7.2, which lacks ``guest-get-load``."""
    agent: Path = Path("/usr/sbin/qemu-ga")
    stress_ng: Path = Path("/usr/bin/stress-ng")
    busybox: Path = Path("/bin/busybox")


def install_system_packages(script: Path = INSTALL_SCRIPT) -> None:
    """Run the project's apt script (quick when everything is present)."""
    if not script.exists():
        raise DependencyError(f"{script} not found: run the lab from the project's source tree")
    result = subprocess.run(
        [str(script)], capture_output=True, text=True, check=False, timeout=1200
    )
    if result.returncode != 0:
        raise DependencyError(f"{script} failed ({result.returncode}):\n{result.stderr[-4000:]}")


def newest_kernel_package() -> str:
    """The newest ``linux-image-6.1.0-<N>-cloud-amd64`` apt knows of (updating lists if none)."""
    for attempt in range(2):
        result = subprocess.run(
            ["apt-cache", "pkgnames", "linux-image-6.1.0-"],
            capture_output=True,
            text=True,
            check=False,
        )
        candidates = [
            (int(match.group(2)), name)
            for name in result.stdout.split()
            if (match := KERNEL_PACKAGE.match(name))
        ]
        if candidates:
            return max(candidates)[1]
        if attempt == 0:
            _run(["apt-get", "update", "-qq"], cwd=None)
    raise DependencyError("apt knows no linux-image-6.1.0-<N>-cloud-amd64 package")


def fetch_guest_parts(*, cache_dir: Path = DEFAULT_CACHE_DIR) -> GuestParts:
    """Download and unpack the guest kernel and the old agent into ``cache_dir`` if missing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    kernel_root = _cached_kernel(cache_dir)
    if kernel_root is None:
        kernel_root = _unpack(newest_kernel_package(), cache_dir / "kernel")
    agent_root = cache_dir / "qemu-guest-agent-7.2"
    if not (agent_root / _DONE_MARKER).exists():
        agent_root = _unpack(OLD_AGENT_PACKAGE, cache_dir, folder_name="qemu-guest-agent-7.2")
    kernels = sorted((kernel_root / "boot").glob("vmlinuz-*"))
    module_dirs = sorted((kernel_root / "lib" / "modules").glob("*"))
    old_agent = agent_root / "usr" / "sbin" / "qemu-ga"
    if not kernels or not module_dirs or not old_agent.exists():
        raise DependencyError(f"unpacked packages in {cache_dir} lack a kernel, modules or qemu-ga")
    return GuestParts(kernel=kernels[-1], modules_dir=module_dirs[-1], old_agent=old_agent)


def ensure_dependencies(
    *, cache_dir: Path = DEFAULT_CACHE_DIR, script: Path = INSTALL_SCRIPT
) -> GuestParts:
    """Install the system packages, then fetch the guest's parts."""
    install_system_packages(script)
    return fetch_guest_parts(cache_dir=cache_dir)


def _cached_kernel(cache_dir: Path) -> Path | None:
    """The newest unpacked kernel; apt is asked again only when none is cached."""
    unpacked = [
        (int(match.group(2)), path)
        for path in (cache_dir / "kernel").glob("linux-image-*")
        if (match := KERNEL_PACKAGE.match(path.name)) and (path / _DONE_MARKER).exists()
    ]
    return max(unpacked)[1] if unpacked else None


def _unpack(package: str, parent: Path, *, folder_name: str | None = None) -> Path:
    """``apt-get download`` ``package`` and ``dpkg-deb -x`` it into ``parent/<folder_name>``."""
    target = parent / (folder_name or package)
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".download-") as download:
        # apt's download sandbox user must be able to write here.
        if _user_exists("_apt"):
            shutil.chown(download, user="_apt")
        _run(["apt-get", "download", "-qq", package], cwd=Path(download))
        debs = sorted(Path(download).glob("*.deb"))
        if len(debs) != 1:
            raise DependencyError(f"apt-get download {package} produced {debs}")
        staging = Path(download) / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(staging)], cwd=None)
        (staging / _DONE_MARKER).write_text(debs[0].name + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _run(argv: list[str], *, cwd: Path | None) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DependencyError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
