"""The guest's initramfs: busybox, three guest agents, stress-ng, the virtio and fuse modules.

The kernel boots straight into this initramfs (a disk, when a VM has one, is only read by
load generators or used as swap), whose ``/init`` loads the kernel modules, turns swap on on the
virtio disk whose serial is ``SWAP_DISK_SERIAL`` (if there is one), finds the guest-agent port
and, as the kernel command line says, starts qemu-ga 10.0 (``guestload.agent=current``, the
default), the old qemu-ga 7.2 (``guestload.agent=old``), the lab's Windows-like agent
(``guestload.agent=windows``, see ``guestload_lab.windows_agent``) or no agent
(``guestload.agent=none``), and optionally ``stress-ng --cpu N`` (``guestload.stress=N``). The
image is cached under a hash of everything that goes into it, so a second build is a file lookup.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from guestload_lab.deps import DEFAULT_CACHE_DIR, GuestParts
from guestload_lab.windows_agent import GUEST_PATH as GUEST_WINDOWS_AGENT_PATH
from guestload_lab.windows_agent import build_windows_agent

MODULE_ORDER = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
    "virtio_balloon",
    "fuse",
)
"""The modules of Debian's cloud kernel the guest loads, in the order ``insmod`` needs them.

``virtio_blk`` (needing only virtio and virtio_ring) gives a guest with a disk its ``/dev/vda``;
``virtio_balloon`` (virtio and virtio_ring too) drives a ``<memballoon model='virtio'>``, whose
statistics (swap in/out, page faults, free memory) libvirt reads; ``fuse`` (no dependencies;
``CONFIG_FUSE_FS=m``) gives ``/dev/fuse``, for a mount whose daemon never answers (see
``LabVm.start_blocked_tasks``).
"""

AGENT_PORT_NAME = "org.qemu.guest_agent.0"
GUEST_AGENT_PATH = "/usr/sbin/qemu-ga"
GUEST_OLD_AGENT_PATH = "/opt/qemu-ga-7.2/qemu-ga"
GUEST_STRESS_PATH = "/usr/bin/stress-ng"
GUEST_BUSYBOX_PATH = "/bin/busybox"
SWAP_DISK_SERIAL = "guestload-swap"
"""The serial of the virtio disk ``/init`` formats and turns on as swap (``VmSpec.swap_mib``)."""
READY_LINE = "guestload-guest: ready"
"""What ``/init`` prints on the serial console once the agent (if any) was started."""

_INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s
mkdir -p /proc /sys /dev /tmp /run /var/run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in {" ".join(MODULE_ORDER)}; do
  insmod /modules/$module.ko || echo "guestload-guest: insmod $module failed"
done

agent=current
stress=0
for word in $(cat /proc/cmdline); do
  case "$word" in
    guestload.agent=*) agent="${{word#*=}}" ;;
    guestload.stress=*) stress="${{word#*=}}" ;;
  esac
done

port=""
tries=0
[ "$agent" = none ] && tries=100
while [ -z "$port" ] && [ "$tries" -lt 100 ]; do
  for name_file in /sys/class/virtio-ports/*/name; do
    if [ -f "$name_file" ] && [ "$(cat "$name_file")" = "{AGENT_PORT_NAME}" ]; then
      candidate="/dev/$(basename "$(dirname "$name_file")")"
      [ -e "$candidate" ] && port="$candidate"
    fi
  done
  [ -z "$port" ] && sleep 0.1
  tries=$((tries + 1))
done
echo "guestload-guest: agent=$agent port=${{port:-none}} stress=$stress"

swap=""
for serial_file in /sys/block/vd*/serial; do
  if [ -f "$serial_file" ] && [ "$(cat "$serial_file")" = "{SWAP_DISK_SERIAL}" ]; then
    swap="/dev/$(basename "$(dirname "$serial_file")")"
  fi
done
if [ -n "$swap" ]; then
  tries=0
  while [ ! -b "$swap" ] && [ "$tries" -lt 50 ]; do sleep 0.1; tries=$((tries + 1)); done
  if mkswap "$swap" >/dev/null 2>&1 && swapon "$swap"; then
    echo "guestload-guest: swap on $swap"
  else
    echo "guestload-guest: swap on $swap failed"
  fi
fi

if [ "$stress" -gt 0 ] && [ -x {GUEST_STRESS_PATH} ]; then
  {GUEST_STRESS_PATH} --cpu "$stress" -q &
fi
if [ "$agent" != none ] && [ -n "$port" ]; then
  case "$agent" in
    current) {GUEST_AGENT_PATH} -m virtio-serial -p "$port" & ;;
    old) {GUEST_OLD_AGENT_PATH} -m virtio-serial -p "$port" & ;;
    windows) {GUEST_WINDOWS_AGENT_PATH} -m virtio-serial -p "$port" & ;;
  esac
fi
echo "{READY_LINE}"
while true; do
  wait
  sleep 5
done
"""


class ImageError(RuntimeError):
    """The initramfs could not be built."""


@dataclass(frozen=True, slots=True)
class GuestImage:
    """A bootable guest: kernel and initramfs."""

    kernel: Path
    initrd: Path


def build_image(
    parts: GuestParts, *, with_stress: bool = True, cache_dir: Path = DEFAULT_CACHE_DIR
) -> GuestImage:
    """Return the cached initramfs for ``parts``, building it first if it is missing.

    ``with_stress=False`` leaves stress-ng and its libraries out: the image shrinks from
    ~13 MB to ~2 MB and boots faster under TCG (such a guest ignores ``guestload.stress``).
    """
    files = _image_files(parts, with_stress=with_stress)
    files[GUEST_WINDOWS_AGENT_PATH] = build_windows_agent(cache_dir=cache_dir)
    digest = _content_hash(files)
    images = cache_dir / "images"
    initrd = images / f"initramfs-{digest[:16]}.img.gz"
    if not initrd.exists():
        images.mkdir(parents=True, exist_ok=True)
        _build(files, initrd)
    return GuestImage(kernel=parts.kernel, initrd=initrd)


def _image_files(parts: GuestParts, *, with_stress: bool) -> dict[str, Path]:
    """Guest path -> host file, for every regular file of the image except ``/init``."""
    files: dict[str, Path] = {
        GUEST_BUSYBOX_PATH: parts.busybox,
        GUEST_AGENT_PATH: parts.agent,
        GUEST_OLD_AGENT_PATH: parts.old_agent,
    }
    binaries = [parts.agent, parts.old_agent]
    if with_stress:
        files[GUEST_STRESS_PATH] = parts.stress_ng
        binaries.append(parts.stress_ng)
    for binary in binaries:
        for library in _shared_libraries(binary):
            files.setdefault(str(library), library)
    for module in MODULE_ORDER:
        found = sorted(parts.modules_dir.rglob(f"{module}.ko"))
        if not found:
            raise ImageError(f"{module}.ko not found under {parts.modules_dir}")
        files[f"/modules/{module}.ko"] = found[0]
    return files


def _shared_libraries(binary: Path) -> list[Path]:
    """Every library ``ldd`` resolves for ``binary``, the dynamic loader included."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageError(f"ldd {binary} failed: {result.stderr.strip()}")
    libraries: list[Path] = []
    for line in result.stdout.splitlines():
        words = line.split()
        if "=>" in words:
            target = words[words.index("=>") + 1]
            if target == "not":
                raise ImageError(f"{binary} needs a library the host lacks: {line.strip()}")
            libraries.append(Path(target))
        elif words and words[0].startswith("/"):
            libraries.append(Path(words[0]))
    return libraries


def _content_hash(files: dict[str, Path]) -> str:
    digest = hashlib.sha256(_INIT_SCRIPT.encode())
    for guest_path in sorted(files):
        digest.update(guest_path.encode() + b"\0")
        digest.update(files[guest_path].read_bytes())
    return digest.hexdigest()


def _build(files: dict[str, Path], initrd: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="guestload-initramfs-") as staging_name:
        staging = Path(staging_name)
        for guest_path, host_file in files.items():
            target = staging / guest_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(host_file, target)  # follows symlinks: the library itself
            target.chmod(0o755)
        init = staging / "init"
        init.write_text(_INIT_SCRIPT)
        init.chmod(0o755)
        for folder in ("proc", "sys", "dev", "tmp", "run", "etc", "root", "sbin"):
            (staging / folder).mkdir(exist_ok=True)
        os.mknod(staging / "dev" / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
        members = sorted(str(path.relative_to(staging)) for path in staging.rglob("*"))
        partial = initrd.with_suffix(".partial")
        cpio = subprocess.run(
            ["busybox", "cpio", "-o", "-H", "newc"],
            input="\n".join(members).encode() + b"\n",
            cwd=staging,
            capture_output=True,
            check=False,
        )
        if cpio.returncode != 0:
            raise ImageError(f"busybox cpio failed: {cpio.stderr.decode(errors='replace')}")
        with gzip.open(partial, "wb", compresslevel=6) as archive:
            archive.write(cpio.stdout)
        partial.rename(initrd)
