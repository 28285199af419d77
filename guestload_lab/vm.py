"""Tiny VMs under TCG: domain XML, boot, destroy, and commands through the guest agent.

Guests boot the Debian kernel straight into the lab's initramfs (no NIC, no graphics, and no
disk unless asked for). ``<domain type='qemu'>`` (TCG) is used on purpose: on our machines
``/dev/kvm`` opens but Linux guests die under it. ACPI is on: without its tables the kernel
brings up one CPU only, whatever ``<vcpu>`` says.

Five causes of a slow VM can be produced on demand: a CPU-bound guest (``start_stress``), a
guest blocked on I/O (``VmSpec.disk_iops`` and ``start_disk_readers``: tasks waiting for a
throttled disk count in the load average while the vCPU idles), a guest blocked on no disk
(``start_blocked_tasks``: tasks waiting for a FUSE daemon that never answers count in the load
average but not in iowait), a guest in a swap storm (``VmSpec.swap_mib`` and
``start_memory_hog``: tasks touching more memory than the guest has wait for swap-in, the vCPU
busy in system time; ``VmSpec.balloon_stats_period`` makes libvirt's balloon statistics show the
swap traffic and major faults) and host contention (``VmSpec.host_cpu``: VMs pinned to one host
CPU wait for it, seen in ``vcpu.N.delay``).
"""

from __future__ import annotations

import base64
import contextlib
import enum
import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import libvirt
import libvirt_qemu

from guestload_lab.image import AGENT_PORT_NAME, READY_LINE, SWAP_DISK_SERIAL, GuestImage
from guestload_lab.waiting import wait_until

KUBEVIRT_NAMESPACE_URI = "http://kubevirt.io"
AGENT_COMMAND_TIMEOUT_SECONDS = 5
DISK_MIB = 64
"""Size of the raw file behind a VM's throttled disk."""
MEMORY_HOG_SESSION = "/run/guestload-memory-hog.sid"
"""Where the guest keeps the session id of the ``stress-ng --vm`` processes of
``start_memory_hog`` (stress-ng renames its workers, so they are found by session)."""
_STOP_MEMORY_HOG_SCRIPT = f"""[ -f {MEMORY_HOG_SESSION} ] || exit 0
sid=$(cat {MEMORY_HOG_SESSION})
for round in 1 2 3; do
  for stat in /proc/[0-9]*/stat; do
    line=$(cat "$stat" 2>/dev/null) || continue
    set -- ${{line##*) }}
    pid=${{stat#/proc/}}
    [ "$4" = "$sid" ] && kill -9 "${{pid%/stat}}" 2>/dev/null
  done
  sleep 1
done
rm -f {MEMORY_HOG_SESSION}
exit 0
"""
"""Kills every process of the hog's session; three rounds, as stress-ng restarts a worker the
OOM killer (or a first round) ended."""
DISK_READER_COMMAND = "dd if=/dev/vda of=/dev/null bs=4096 count=64 iflag=direct"
"""What each disk reader repeats: direct reads wait for the disk in uninterruptible sleep."""
DISK_READER_PIDS = "/run/guestload-disk-readers.pids"
"""Where the guest keeps the pids of its disk-reader loops."""
HUNG_MOUNT = "/mnt/guestload-hung"
"""Where the guest mounts a FUSE file system whose daemon never answers."""
HUNG_HOLDER_PID = "/run/guestload-hung-holder.pid"
"""The pid of the guest process that holds the hung mount's ``/dev/fuse`` open and never reads."""
BLOCKED_TASK_PIDS = "/run/guestload-blocked-tasks.pids"
"""Where the guest keeps the pids of the tasks blocked on the hung mount."""
BLOCKED_TASK_COMMAND = f"stat {HUNG_MOUNT}"
"""What each blocked task runs: a getattr on the hung mount's root (its attributes are stale
from the start), which waits for FUSE's INIT reply in ``fuse_get_req``, a killable sleep. A
lookup below the root would do too, but all lookups after the first wait for it in
``fuse_lock_inode`` (a plain mutex: the directory lock FUSE takes until INIT allows parallel
directory operations)."""

_HUNG_MOUNT_SCRIPT = f"""mkdir -p {HUNG_MOUNT}
exec 3<>/dev/fuse
mount -t fuse -o fd=3,rootmode=40000,user_id=0,group_id=0 guestload-hung {HUNG_MOUNT} || exit 1
echo $$ >{HUNG_HOLDER_PID}
exec sleep 2147483647
"""
"""Mounts the hung FUSE file system, then keeps its ``/dev/fuse`` open (fd 3) without reading.

The kernel queues FUSE_INIT on mount; nobody answers it, so the connection never initialises
and every request waits in ``fuse_get_req`` (a killable, i.e. uninterruptible, sleep). Closing
the last ``/dev/fuse`` descriptor would abort the connection: hence ``exec sleep`` keeps it.
"""
_STOP_BLOCKED_SCRIPT = f"""mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null
for abort in /sys/fs/fuse/connections/*/abort; do
  [ -e "$abort" ] && echo 1 >"$abort"
done
umount -l {HUNG_MOUNT} 2>/dev/null
[ -f {HUNG_HOLDER_PID} ] && kill -9 $(cat {HUNG_HOLDER_PID}) 2>/dev/null
[ -f {BLOCKED_TASK_PIDS} ] && kill -9 $(cat {BLOCKED_TASK_PIDS}) 2>/dev/null
rm -f {HUNG_HOLDER_PID} {BLOCKED_TASK_PIDS}
exit 0
"""


BURST_WORKERS = 16
"""``stress-ng --cpu`` workers of each burst of ``LabVm.start_bursts`` by default."""
BURST_PERIOD = 300
"""Seconds from one burst's start to the next one's by default."""
BURST_SECONDS = 30
"""How long each burst lasts by default."""
BURST_LOOP_PID = "/run/guestload-bursts.pid"
"""Where the guest keeps the pid of the shell loop that starts the bursts."""
_STOP_BURSTS_SCRIPT = f"""[ -f {BURST_LOOP_PID} ] && kill -9 $(cat {BURST_LOOP_PID}) 2>/dev/null
rm -f {BURST_LOOP_PID}
killall -9 stress-ng 2>/dev/null
exit 0
"""
"""Ends the loop first (so it starts no new burst), then the burst that runs."""


_CONNECTION_ERROR_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})
"""Where libvirt reports a broken connection (the daemon went away)."""


GUEST_EXEC_TIMEOUT = 30
"""Seconds the agent may take to start a command. Measured: more than 5 s for ``killall`` in a
1-vCPU guest running 32 stress-ng workers beside a guest in a swap storm on 2 host cores."""


class AgentKind(enum.StrEnum):
    """What answers on the guest-agent channel."""

    CURRENT = "current"
    """qemu-ga 10.0: has guest-get-load."""
    OLD = "old"
    """qemu-ga 7.2: lacks guest-get-load."""
    WINDOWS = "windows"
    """The lab's Windows-like agent (``guestload_lab.windows_agent``): answers as Windows'
    qemu-ga does (OS ``mswindows``, guest-get-load from the processor queue, starting at 0, no
    guest-get-cpustats)."""
    NONE = "none"
    """The channel exists but no agent is started."""


class VmError(RuntimeError):
    """A VM did not boot, or its agent did not answer."""


@dataclass(frozen=True, slots=True)
class VmSpec:
    """What a lab VM looks like. ``channel=False`` leaves the guest-agent channel out."""

    name: str
    vcpus: int = 1
    memory_mib: int = 176
    """160 MiB at least with stress-ng in the image (the initramfs must unpack), else 96."""
    agent: AgentKind = AgentKind.CURRENT
    channel: bool = True
    stress_workers: int = 0
    """``stress-ng --cpu N`` started by ``/init`` at boot (0: none)."""
    kubevirt_uid: str | None = None
    """Adds KubeVirt's ``<kubevirt xmlns="http://kubevirt.io"><uid>`` metadata."""
    disk_iops: int | None = None
    """Adds ``/dev/vda``: a 64 MiB raw virtio disk (``cache='none'``) limited to this many
    I/O operations per second in total (None: no disk)."""
    host_cpu: int | None = None
    """Pins every vCPU and the emulator threads to this host CPU (None: not pinned)."""
    balloon_stats_period: int | None = None
    """Adds a virtio memory balloon (``<memballoon model='virtio'>``, never inflated) whose guest
    driver reports memory statistics every this many seconds: libvirt's ``memoryStats()`` and
    bulk ``balloon.*`` stats (None: ``<memballoon model='none'/>``)."""
    swap_mib: int | None = None
    """Adds a raw virtio disk of this many MiB (serial ``SWAP_DISK_SERIAL``, host page cache,
    no throttling) that the guest's ``/init`` turns into swap (None: no swap)."""

    @staticmethod
    def kubevirt(namespace: str, vmi: str, uid: str, **settings: Any) -> VmSpec:
        """A spec named the way KubeVirt's virt-launcher names domains: ``<namespace>_<vmi>``."""
        return VmSpec(name=f"{namespace}_{vmi}", kubevirt_uid=uid, **settings)


def domain_xml(
    spec: VmSpec,
    image: GuestImage,
    *,
    serial_log: Path,
    disk: Path | None = None,
    swap_disk: Path | None = None,
) -> str:
    """The libvirt domain XML for ``spec``; ``disk`` is the raw file behind ``disk_iops``,
    ``swap_disk`` the one behind ``swap_mib``."""
    if spec.memory_mib < 96:
        raise ValueError("a guest needs at least 96 MiB (160 MiB with stress-ng in its image)")
    if (spec.disk_iops is None) != (disk is None):
        raise ValueError("a disk file goes with disk_iops, and only with it")
    if (spec.swap_mib is None) != (swap_disk is None):
        raise ValueError("a swap disk file goes with swap_mib, and only with it")
    if spec.balloon_stats_period is not None and spec.balloon_stats_period < 1:
        raise ValueError("balloon_stats_period is a number of seconds, at least 1")
    # Without a channel there is no port to wait for: /init skips the agent.
    agent = spec.agent if spec.channel else AgentKind.NONE
    cmdline = (
        f"console=ttyS0 panic=-1 quiet guestload.agent={agent.value}"
        f" guestload.stress={spec.stress_workers}"
    )
    metadata = ""
    if spec.kubevirt_uid is not None:
        metadata = (
            f"<metadata><kubevirt xmlns={quoteattr(KUBEVIRT_NAMESPACE_URI)}>"
            f"<uid>{escape(spec.kubevirt_uid)}</uid></kubevirt></metadata>"
        )
    channel = ""
    if spec.channel:
        channel = (
            "<channel type='unix'><source mode='bind'/>"
            f"<target type='virtio' name={quoteattr(AGENT_PORT_NAME)}/></channel>"
        )
    disk_element = ""
    if spec.disk_iops is not None and disk is not None:
        disk_element = (
            "<disk type='file' device='disk'>"
            "<driver name='qemu' type='raw' cache='none'/>"
            f"<source file={quoteattr(str(disk))}/><target dev='vda' bus='virtio'/>"
            f"<iotune><total_iops_sec>{spec.disk_iops}</total_iops_sec></iotune></disk>"
        )
    if spec.swap_mib is not None and swap_disk is not None:
        # Target vdb sorts after the throttled disk's vda, so libvirt gives it the later PCI
        # slot and the guest probes it second: the throttled disk stays /dev/vda. /init finds
        # the swap disk by its serial, whatever the guest names it.
        disk_element += (
            "<disk type='file' device='disk'>"
            "<driver name='qemu' type='raw' cache='unsafe'/>"
            f"<source file={quoteattr(str(swap_disk))}/><target dev='vdb' bus='virtio'/>"
            f"<serial>{SWAP_DISK_SERIAL}</serial></disk>"
        )
    memballoon = "<memballoon model='none'/>"
    if spec.balloon_stats_period is not None:
        memballoon = (
            f"<memballoon model='virtio'><stats period='{spec.balloon_stats_period}'/></memballoon>"
        )
    cputune = ""
    if spec.host_cpu is not None:
        pins = "".join(
            f"<vcpupin vcpu='{vcpu}' cpuset='{spec.host_cpu}'/>" for vcpu in range(spec.vcpus)
        )
        cputune = f"<cputune>{pins}<emulatorpin cpuset='{spec.host_cpu}'/></cputune>"
    serial = quoteattr(str(serial_log))
    return f"""<domain type='qemu'>
  <name>{escape(spec.name)}</name>
  {metadata}
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>{spec.vcpus}</vcpu>
  {cputune}
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'><source path={serial}/><target port='0'/></serial>
    <console type='file'><source path={serial}/><target type='serial' port='0'/></console>
    {disk_element}
    {channel}
    <controller type='usb' model='none'/>
    {memballoon}
  </devices>
</domain>
"""


class Hypervisor:
    """A read-write connection to one libvirt URI, reopened when the daemon went away."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        # Failures surface as exceptions; libvirt's default handler would also print each one
        # (dozens while an agent boots).
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        self._lock = threading.Lock()
        self._connection: libvirt.virConnect | None = None

    def connection(self) -> libvirt.virConnect:
        """The open connection (a new one if the old one died)."""
        with self._lock:
            if self._connection is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    if self._connection.isAlive():
                        return self._connection
                with contextlib.suppress(libvirt.libvirtError):
                    self._connection.close()
            self._connection = libvirt.open(self.uri)
            return self._connection

    def reconnect(self) -> libvirt.virConnect:
        """Drop the current connection (e.g. after the daemon restarted) and open a new one."""
        self.close()
        return self.connection()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._connection.close()
                self._connection = None

    def create(self, spec: VmSpec, image: GuestImage, *, log_dir: Path) -> LabVm:
        """Boot a transient domain for ``spec``; serial console and disk files go to ``log_dir``."""
        log_dir.mkdir(parents=True, exist_ok=True)
        serial_log = log_dir / f"{spec.name}.serial.log"
        serial_log.unlink(missing_ok=True)
        disk = swap_disk = None
        if spec.disk_iops is not None:
            disk = _sparse_file(log_dir / f"{spec.name}.vda.raw", DISK_MIB)
        if spec.swap_mib is not None:
            swap_disk = _sparse_file(log_dir / f"{spec.name}.swap.raw", spec.swap_mib)
        xml = domain_xml(spec, image, serial_log=serial_log, disk=disk, swap_disk=swap_disk)
        domain = self.connection().createXML(xml, 0)
        return LabVm(hypervisor=self, spec=spec, uuid=domain.UUIDString(), serial_log=serial_log)

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class LabVm:
    """A running lab VM, found by UUID on every call so it survives daemon restarts."""

    def __init__(self, *, hypervisor: Hypervisor, spec: VmSpec, uuid: str, serial_log: Path):
        self.hypervisor = hypervisor
        self.spec = spec
        self.uuid = uuid
        self.serial_log = serial_log
        self.created_at = time.monotonic()

    @property
    def name(self) -> str:
        return self.spec.name

    def domain(self) -> libvirt.virDomain:
        """The domain, looked up again (through a new connection if the old one broke)."""
        try:
            return self.hypervisor.connection().lookupByUUIDString(self.uuid)
        except libvirt.libvirtError as error:
            if error.get_error_domain() not in _CONNECTION_ERROR_DOMAINS:
                raise
        return self.hypervisor.reconnect().lookupByUUIDString(self.uuid)

    def is_running(self) -> bool:
        try:
            return bool(self.domain().isActive())
        except libvirt.libvirtError:
            return False

    def destroy(self) -> None:
        """Stop the domain at once (the guest has no ACPI; shutdown would wait forever)."""
        with contextlib.suppress(libvirt.libvirtError):
            self.domain().destroy()

    def console_text(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_booted(self, timeout: float = 60.0) -> float:
        """Wait for ``/init``'s ready line on the serial console; seconds since creation."""

        def booted() -> bool:
            if READY_LINE in self.console_text():
                return True
            if not self.is_running():
                raise VmError(f"{self.name} stopped while booting:\n{self.console_tail()}")
            return False

        wait_until(
            booted,
            timeout=timeout,
            interval=0.2,
            what=f"{self.name} booted",
            detail=self.console_tail,
            error=VmError,
        )
        return time.monotonic() - self.created_at

    def agent_command(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: int = 5
    ) -> Any:
        """Send one guest-agent command through libvirt and return its ``return`` value."""
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        reply = libvirt_qemu.qemuAgentCommand(self.domain(), json.dumps(request), timeout, 0)
        return json.loads(reply)["return"]

    def wait_agent(self, timeout: float = 60.0) -> float:
        """Wait until the agent answers ``guest-ping``; seconds since creation."""
        return wait_all_agents([self], timeout=timeout)[self.name]

    def guest_load(self) -> dict[str, float]:
        """``virDomainGetGuestInfo(LOAD)``: the guest's ``load.1m/5m/15m``."""
        info = self.domain().guestInfo(libvirt.VIR_DOMAIN_GUEST_INFO_LOAD, 0)
        return {key: float(value) for key, value in info.items()}

    def guest_exec(self, argv: Sequence[str], *, timeout: int = GUEST_EXEC_TIMEOUT) -> int:
        """Start ``argv`` in the guest without waiting; the guest pid.

        The agent may take long to answer in a guest whose one vCPU runs dozens of busy tasks
        on a host that runs several such guests: the timeout is generous.
        """
        reply = self.agent_command(
            "guest-exec",
            {"path": argv[0], "arg": list(argv[1:]), "capture-output": True},
            timeout=timeout,
        )
        return int(reply["pid"])

    def run_in_guest(self, argv: Sequence[str], *, timeout: float = 30.0) -> tuple[int, str]:
        """Run ``argv`` in the guest to its end: exit code and stdout+stderr."""
        pid = self.guest_exec(argv)
        status: dict[str, Any] = wait_until(
            lambda: self._exec_status_if_exited(pid),
            timeout=timeout,
            interval=0.2,
            what=f"{self.name}: {' '.join(argv)} finished",
            error=VmError,
        )
        output = "".join(
            base64.b64decode(status.get(stream, "")).decode(errors="replace")
            for stream in ("out-data", "err-data")
        )
        return int(status.get("exitcode", -1)), output

    def _exec_status_if_exited(self, pid: int) -> dict[str, Any] | None:
        status: dict[str, Any] = self.agent_command("guest-exec-status", {"pid": pid})
        return status if status.get("exited") else None

    def agent_answers(self, *, timeout: int = 1) -> bool:
        """True when the agent answers ``guest-ping``; an error when the VM has stopped."""
        try:
            self.agent_command("guest-ping", timeout=timeout)
        except libvirt.libvirtError:
            if not self.is_running():
                raise VmError(
                    f"{self.name} stopped while booting:\n{self.console_tail()}"
                ) from None
            return False
        return True

    def start_stress(self, workers: int, *, seconds: int = 600) -> int:
        """Start ``stress-ng --cpu workers`` in the guest through the agent."""
        return self.guest_exec(
            ["/usr/bin/stress-ng", "--cpu", str(workers), "--timeout", str(seconds), "-q"]
        )

    def stop_stress(self) -> None:
        """Kill every stress-ng process in the guest."""
        self.guest_exec(["/bin/busybox", "killall", "-9", "stress-ng"])

    def start_bursts(
        self,
        workers: int = BURST_WORKERS,
        *,
        period: int = BURST_PERIOD,
        burst_seconds: int = BURST_SECONDS,
    ) -> int:
        """Start a guest loop that runs ``stress-ng --cpu workers`` for ``burst_seconds`` every
        ``period`` seconds, the first burst at once: a bursty guest. Returns the loop's pid.

        Bursts start on a fixed schedule (``period`` apart, however long stress-ng takes to
        stop). With the defaults the guest has 16 x 30 / 300 = 1.6 runnable tasks per period on
        average. The kernel's averages make a burst of n tasks lasting t seconds lift load.1m by
        n(1 - e^(-t/60)) and load.5m by n(1 - e^(-t/300)), on top of what is left of earlier
        bursts: 6.3 and 1.5 for 16 workers and 30 s, 12.6 and 3.0 for 32. So with the defaults
        load.1m stays under 10 and load.5m passes 2 per vCPU only with an earlier burst's rest;
        ``python -m guestload_lab.bursts`` measures the peaks on real guests.
        """
        if burst_seconds < 1 or period <= burst_seconds or workers < 1:
            raise ValueError("a burst lasts at least 1 s, less than its period, with 1+ workers")
        loop = (
            f"echo $$ >{BURST_LOOP_PID}; next=$(date +%s); while true; do"
            f" /usr/bin/stress-ng --cpu {workers} --timeout {burst_seconds} -q;"
            f" next=$((next + {period})); now=$(date +%s);"
            ' [ "$next" -gt "$now" ] && sleep $((next - now));'
            " done"
        )
        return self.guest_exec(["/bin/busybox", "sh", "-c", loop])

    def stop_bursts(self, *, timeout: float = 60.0) -> None:
        """End the burst loop of ``start_bursts`` and the burst that runs, if any."""
        code, output = self.run_in_guest(
            ["/bin/busybox", "sh", "-c", _STOP_BURSTS_SCRIPT], timeout=timeout
        )
        if code != 0:
            raise VmError(f"{self.name}: stopping the bursts failed ({code}): {output}")

    def start_memory_hog(
        self, workers: int = 16, *, total_mib: int = 192, seconds: int = 600
    ) -> int:
        """Start ``stress-ng --vm <workers> --vm-bytes <total_mib>M --vm-keep`` in the guest.

        stress-ng (0.15) splits ``--vm-bytes`` among the workers: each keeps one mapping of
        ``total_mib / workers`` MiB and writes all of it over and over (``--vm-method
        write64``). When together they need more than the guest's free memory, every pass
        faults pages back in from swap (``VmSpec.swap_mib``): the workers wait in
        uninterruptible sleep for swap-in or run reclaim, all counted in the load average, and
        the vCPU spends its time in the kernel. Needs the image with stress-ng (``build_image``
        default). A worker the OOM killer ends is restarted by stress-ng. Returns the guest pid
        of the ``setsid`` that starts them.
        """
        hog = (
            f"echo $$ >{MEMORY_HOG_SESSION}; exec /usr/bin/stress-ng --vm {workers}"
            f" --vm-bytes {total_mib}M --vm-keep --vm-method write64 --timeout {seconds} -q"
        )
        return self.guest_exec(["/bin/busybox", "setsid", "/bin/busybox", "sh", "-c", hog])

    def stop_memory_hog(self, *, timeout: float = 60.0) -> None:
        """Kill every process of the memory hog (its whole session); its swap stays in use until
        other tasks touch memory."""
        code, output = self.run_in_guest(
            ["/bin/busybox", "sh", "-c", _STOP_MEMORY_HOG_SCRIPT], timeout=timeout
        )
        if code != 0:
            raise VmError(f"{self.name}: stopping the memory hog failed ({code}): {output}")

    def oom_kills(self) -> list[str]:
        """The guest kernel's ``Out of memory: Killed process …`` lines (``dmesg``)."""
        _, output = self.run_in_guest(["/bin/busybox", "dmesg"])
        return [line for line in output.splitlines() if "Killed process" in line]

    def balloon_sample(self) -> BalloonSample:
        """The balloon driver's last statistics from libvirt's bulk stats (``balloon.*``).

        Needs ``VmSpec.balloon_stats_period``; without it only ``current`` and ``maximum``
        exist. Values as libvirt gives them: KiB for memory and swap, counts for faults.
        """
        domain = self.domain()
        ((_, stats),) = self.hypervisor.connection().domainListGetStats(
            [domain], libvirt.VIR_DOMAIN_STATS_BALLOON
        )
        return BalloonSample(
            at=time.monotonic(),
            stats={
                key.removeprefix("balloon."): int(value)
                for key, value in stats.items()
                if key.startswith("balloon.")
            },
        )

    def start_disk_readers(self, readers: int = 16) -> None:
        """Start ``readers`` endless loops of direct 4 KiB reads from the guest's ``/dev/vda``.

        On a throttled disk (``VmSpec.disk_iops``) every reader spends its time in
        uninterruptible sleep: each one adds 1 to the load average's queue, not to CPU use.
        """
        loop = f"while true; do {DISK_READER_COMMAND}; done"
        script = (
            f"for reader in $(seq {readers}); do"
            f" ({loop}) </dev/null >/dev/null 2>&1 & echo $! >>{DISK_READER_PIDS};"
            " done"
        )
        self.guest_exec(["/bin/busybox", "sh", "-c", script])

    def stop_disk_readers(self) -> None:
        """End the reader loops, then their reads (each ends once its pending read completes)."""
        script = f"kill -9 $(cat {DISK_READER_PIDS}); rm -f {DISK_READER_PIDS}; killall -9 dd"
        self.guest_exec(["/bin/busybox", "sh", "-c", script])

    def start_blocked_tasks(self, tasks: int = 16, *, timeout: float = 30.0) -> None:
        """Start ``tasks`` processes blocked in uninterruptible sleep that wait on no disk.

        The guest mounts a FUSE file system at ``HUNG_MOUNT`` (once: later calls add tasks to
        the same mount) whose daemon never answers, as behind a hung NFS server or a dead FUSE
        daemon; each task runs ``BLOCKED_TASK_COMMAND`` and waits in ``fuse_get_req``
        (``TASK_KILLABLE``): state D, counted in the load average, never in iowait, vCPU idle.
        """
        if not self._hung_mount_present():
            holder = self.guest_exec(["/bin/busybox", "sh", "-c", _HUNG_MOUNT_SCRIPT])

            def mounted() -> bool:
                status: dict[str, Any] = self.agent_command("guest-exec-status", {"pid": holder})
                if status.get("exited"):
                    output = "".join(
                        base64.b64decode(status.get(stream, "")).decode(errors="replace")
                        for stream in ("out-data", "err-data")
                    )
                    raise VmError(f"{self.name}: mounting {HUNG_MOUNT} failed: {output.strip()}")
                return self._hung_mount_present()

            wait_until(
                mounted,
                timeout=timeout,
                interval=0.2,
                what=f"{self.name}: {HUNG_MOUNT} mounted",
                error=VmError,
            )
        script = (
            f"for task in $(seq {tasks}); do"
            f" {BLOCKED_TASK_COMMAND} </dev/null >/dev/null 2>&1 & echo $! >>{BLOCKED_TASK_PIDS};"
            " done"
        )
        code, output = self.run_in_guest(["/bin/busybox", "sh", "-c", script], timeout=timeout)
        if code != 0:
            raise VmError(f"{self.name}: starting blocked tasks failed ({code}): {output}")

    def stop_blocked_tasks(self) -> None:
        """Abort the hung FUSE connection, unmount it and kill its holder and the tasks.

        Aborting (``/sys/fs/fuse/connections/N/abort``) wakes every waiting request with
        ENOTCONN, so the tasks end at once and the guest's load decays as after any burst.
        """
        code, output = self.run_in_guest(["/bin/busybox", "sh", "-c", _STOP_BLOCKED_SCRIPT])
        if code != 0:
            raise VmError(f"{self.name}: stopping blocked tasks failed ({code}): {output}")

    def blocked_task_states(self) -> list[GuestTask]:
        """State and wait channel of each task ``start_blocked_tasks`` started that still exists."""
        script = (
            f"[ -f {BLOCKED_TASK_PIDS} ] || exit 0; for pid in $(cat {BLOCKED_TASK_PIDS}); do"
            ' [ -r /proc/$pid/stat ] && echo "$pid $(cut -d" " -f3 /proc/$pid/stat)'
            ' $(cat /proc/$pid/wchan)";'
            " done; exit 0"
        )
        _, output = self.run_in_guest(["/bin/busybox", "sh", "-c", script])
        tasks: list[GuestTask] = []
        for line in output.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0].isdigit():
                tasks.append(
                    GuestTask(pid=int(words[0]), state=words[1], wchan=" ".join(words[2:]))
                )
        return tasks

    def _hung_mount_present(self) -> bool:
        """True when the guest's ``/proc/mounts`` lists the hung mount (never touching it)."""
        code, _ = self.run_in_guest(
            ["/bin/busybox", "grep", "-q", f" {HUNG_MOUNT} fuse", "/proc/mounts"]
        )
        return code == 0

    def cpu_stats(self) -> list[dict[str, Any]]:
        """``guest-get-cpustats`` through agent passthrough: one entry per guest CPU.

        Linux entries carry ``cpu`` and the ``/proc/stat`` counters ``user``, ``nice``,
        ``system``, ``idle``, ``iowait``, ``irq``, ``softirq``, ``steal``, ``guest`` and
        ``guestnice`` in milliseconds. Passthrough taints the domain (``custom-ga-command``).
        """
        stats: list[dict[str, Any]] = self.agent_command("guest-get-cpustats")
        return stats

    def vcpu_sample(self) -> VcpuSample:
        """The domain's vCPU counters from libvirt's bulk stats, with the time of reading."""
        domain = self.domain()
        ((_, stats),) = self.hypervisor.connection().domainListGetStats(
            [domain], libvirt.VIR_DOMAIN_STATS_VCPU
        )
        count = int(stats["vcpu.current"])
        return VcpuSample(
            at=time.monotonic(),
            time_ns=tuple(int(stats[f"vcpu.{vcpu}.time"]) for vcpu in range(count)),
            delay_ns=tuple(int(stats[f"vcpu.{vcpu}.delay"]) for vcpu in range(count)),
        )

    def signal_agent(self, signal_name: str) -> None:
        """Send ``signal_name`` (e.g. ``KILL``, ``STOP``) to the guest's qemu-ga, through itself."""
        self.guest_exec(["/bin/busybox", "sh", "-c", f"kill -{signal_name} $(pidof qemu-ga)"])

    def console_tail(self, lines: int = 15) -> str:
        """The last lines of the serial console."""
        return "\n".join(self.console_text().splitlines()[-lines:])


@dataclass(frozen=True, slots=True)
class GuestTask:
    """One guest process as ``/proc/<pid>/stat`` and ``/proc/<pid>/wchan`` show it."""

    pid: int
    state: str
    """``R``, ``S``, ``D`` (uninterruptible, killable included), ``Z``, …"""
    wchan: str
    """The kernel function the task sleeps in (empty or ``0`` when running)."""


@dataclass(frozen=True, slots=True)
class VcpuSample:
    """A domain's ``vcpu.N.time`` (running) and ``vcpu.N.delay`` (waiting for a host CPU)."""

    at: float
    """``time.monotonic()`` when the counters were read."""
    time_ns: tuple[int, ...]
    delay_ns: tuple[int, ...]

    def busy_share(self, later: VcpuSample) -> float:
        """Share of the wall time between the samples the vCPUs ran, averaged over vCPUs."""
        return _rate(self.time_ns, later.time_ns, later.at - self.at)

    def delay_ratio(self, later: VcpuSample) -> float:
        """Share of the wall time between the samples the vCPUs waited for a host CPU."""
        return _rate(self.delay_ns, later.delay_ns, later.at - self.at)


BALLOON_COUNTERS = ("swap_in", "swap_out", "major_fault", "minor_fault")
"""Balloon statistics that only grow: ``swap_in``/``swap_out`` in KiB, faults as counts."""


@dataclass(frozen=True, slots=True)
class BalloonSample:
    """A domain's ``balloon.*`` bulk stats without their prefix (``swap_in``, ``major_fault``,
    ``available``, ``usable``, ``unused``, ``last-update``, …)."""

    at: float
    """``time.monotonic()`` when the counters were read."""
    stats: dict[str, int]

    @property
    def last_update(self) -> int | None:
        """When the guest last sent statistics (host clock, seconds since the epoch)."""
        return self.stats.get("last-update")

    def rates(self, later: BalloonSample) -> dict[str, float] | None:
        """Per-second growth of ``BALLOON_COUNTERS`` between the guest's two reports behind
        the samples (``last-update`` apart); None when the guest sent no report in between."""
        if self.last_update is None or later.last_update is None:
            return None
        seconds = later.last_update - self.last_update
        if seconds <= 0:
            return None
        return {
            name: (later.stats[name] - self.stats[name]) / seconds
            for name in BALLOON_COUNTERS
            if name in self.stats and name in later.stats
        }


def _rate(before: Sequence[int], after: Sequence[int], seconds: float) -> float:
    if len(before) != len(after) or not before or seconds <= 0:
        raise ValueError("samples of different vCPU counts, or not in time order")
    gained = sum(late - early for early, late in zip(before, after, strict=True))
    return gained / 1e9 / seconds / len(before)


def wait_all_agents(vms: Iterable[LabVm], timeout: float = 90.0) -> dict[str, float]:
    """Wait for several VMs booting in parallel; VM name -> seconds from creation to agent."""
    pending = list(vms)
    ready: dict[str, float] = {}

    def all_answer() -> bool:
        for vm in list(pending):
            if vm.agent_answers():
                ready[vm.name] = time.monotonic() - vm.created_at
                pending.remove(vm)
        return not pending

    wait_until(
        all_answer,
        timeout=timeout,
        interval=0.25,
        what="agents answering",
        detail=lambda: "still silent: " + ", ".join(vm.name for vm in pending),
        error=VmError,
    )
    return ready


def _sparse_file(path: Path, mib: int) -> Path:
    """A new (emptied) sparse file of ``mib`` MiB: a raw disk."""
    with path.open("wb") as raw:
        raw.truncate(mib * 1024 * 1024)
    return path


def _ignore_libvirt_error(context: object, error: object) -> None:
    """An error handler that prints nothing: the raised exception carries the error."""
