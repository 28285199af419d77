"""Each disk's requests as the host serves them, and its throttle caps: libvirt's
``VIR_DOMAIN_STATS_BLOCK`` group and the domain's ``<iotune>``.

libvirt reports, per disk of a running domain, ``block.N.name`` (the target, e.g. ``vda``) and
QEMU's counters of the requests it completed for the guest: ``rd.reqs``, ``rd.bytes``,
``rd.times`` (nanoseconds spent), the same for ``wr`` and ``fl`` (flushes). They are the host's
count, not the guest's: requests QEMU throttles wait in QEMU, so a disk held at its cap shows
a request rate equal to the cap. The caps come from the disk's ``<iotune>`` in the domain's live
XML (what ``virsh blkdeviotune`` sets and ``virDomainGetBlockIoTune`` reads): read once per
domain run, and again when libvirt reports a tunable change. A cap of 0 is no cap and is not
exported; disks of one ``<group_name>`` share their caps, which each of them reports.

Each listing also folds the counters with the domain run's previous listing into the rates of
the last poll interval (``guestload_disk_last_poll_*``): exact at any interval, so the rules
can tell at once whether a disk runs at its cap, where a rate over a window would lag.

Exported as ``guestload_disk_*`` with a ``device`` label (the target), the names node_exporter
gives a host's disks; KubeVirt's virt-handler exports the request counters as
``kubevirt_vmi_storage_*`` with a ``drive`` label, and no caps. Every value is bounded: a
counter that is not an integer from 0 to 2**63-1, or a device name that is not a target name,
leaves out that value or that disk for this VM only.

In libvirt's QEMU driver the group costs one ``query-blockstats`` per domain inside the job the
vCPU group already takes. Registered as :data:`REGISTRATION`: ``--collector.block`` (on by
default) reads it.
"""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Final

from guestload.hoststats.hoststat import DEFINITION_KEY_PREFIX, HostStat, bounded_integer
from guestload.hoststats.registry import registration
from guestload.metricspec import VM_LABELS, MetricSpec, MetricType, VmSample
from guestload.registration import CollectorFlag, SimulatedGuest

MAX_COUNT: Final = 2**63 - 1
"""libvirt's values are unsigned 64-bit; above the signed range is broken or hostile."""
MAX_DISKS: Final = 256
"""More disk entries than this in one record are not read (a domain has at most a few dozen)."""
NANOSECONDS: Final = 1e9
_DEVICE = re.compile(r"[a-z][a-z0-9]{0,31}")
"""A disk target as libvirt names them (``vda``, ``sdb``, ``hdc``)."""
_INDEX = re.compile(r"block\.(\d+)\.name")
IOTUNE_PREFIX: Final = DEFINITION_KEY_PREFIX + "iotune."
"""Record keys of the caps: ``guestload.definition.iotune.<device>.<iotune element>``."""

DEVICE_LABELS = (*VM_LABELS, "device")
CAP_LABELS = (*VM_LABELS, "device", "op")

READS = MetricSpec(
    "guestload_disk_reads_completed",
    MetricType.COUNTER,
    "Read requests the host completed for the VM's disk (libvirt's block.N.rd.reqs).",
    DEVICE_LABELS,
)
WRITES = MetricSpec(
    "guestload_disk_writes_completed",
    MetricType.COUNTER,
    "Write requests the host completed for the VM's disk (libvirt's block.N.wr.reqs).",
    DEVICE_LABELS,
)
FLUSHES = MetricSpec(
    "guestload_disk_flush_requests",
    MetricType.COUNTER,
    "Flush requests the host completed for the VM's disk (libvirt's block.N.fl.reqs).",
    DEVICE_LABELS,
)
READ_BYTES = MetricSpec(
    "guestload_disk_read_bytes",
    MetricType.COUNTER,
    "Bytes the host read for the VM's disk (libvirt's block.N.rd.bytes).",
    DEVICE_LABELS,
)
WRITTEN_BYTES = MetricSpec(
    "guestload_disk_written_bytes",
    MetricType.COUNTER,
    "Bytes the host wrote for the VM's disk (libvirt's block.N.wr.bytes).",
    DEVICE_LABELS,
)
READ_TIME = MetricSpec(
    "guestload_disk_read_time_seconds",
    MetricType.COUNTER,
    "Seconds the VM's disk reads took in the host, throttling included "
    "(libvirt's block.N.rd.times).",
    DEVICE_LABELS,
)
WRITE_TIME = MetricSpec(
    "guestload_disk_write_time_seconds",
    MetricType.COUNTER,
    "Seconds the VM's disk writes took in the host, throttling included "
    "(libvirt's block.N.wr.times).",
    DEVICE_LABELS,
)
LAST_POLL_REQUESTS = MetricSpec(
    "guestload_disk_last_poll_requests_per_second",
    MetricType.GAUGE,
    "Requests per second the host completed for the VM's disk between the exporter's last two "
    "listings of the domain (one poll interval), for op read or write.",
    CAP_LABELS,
)
LAST_POLL_BYTES = MetricSpec(
    "guestload_disk_last_poll_bytes_per_second",
    MetricType.GAUGE,
    "Bytes per second the host read or wrote for the VM's disk between the exporter's last two "
    "listings of the domain (one poll interval), for op read or write.",
    CAP_LABELS,
)
THROTTLE_IOPS = MetricSpec(
    "guestload_disk_throttle_iops",
    MetricType.GAUGE,
    "The disk's request cap per second, for op total, read or write (the disk's iotune "
    "total_iops_sec, read_iops_sec, write_iops_sec); absent where uncapped.",
    CAP_LABELS,
)
THROTTLE_BYTES = MetricSpec(
    "guestload_disk_throttle_bytes_per_second",
    MetricType.GAUGE,
    "The disk's bytes cap per second, for op total, read or write (the disk's iotune "
    "total_bytes_sec, read_bytes_sec, write_bytes_sec); absent where uncapped.",
    CAP_LABELS,
)


@dataclass(frozen=True, slots=True)
class _Counter:
    """One exported counter of a disk: its libvirt key suffix, family and scale."""

    suffix: str
    attribute: str
    spec: MetricSpec
    seconds: bool = False
    """Nanoseconds in libvirt, seconds exported."""


_COUNTERS: Final = (
    _Counter("rd.reqs", "reads", READS),
    _Counter("wr.reqs", "writes", WRITES),
    _Counter("fl.reqs", "flushes", FLUSHES),
    _Counter("rd.bytes", "read_bytes", READ_BYTES),
    _Counter("wr.bytes", "written_bytes", WRITTEN_BYTES),
    _Counter("rd.times", "read_time", READ_TIME, seconds=True),
    _Counter("wr.times", "write_time", WRITE_TIME, seconds=True),
)
"""The exported counters, in exposition order."""

_CAPS: Final = (
    ("total_iops_sec", THROTTLE_IOPS, "total"),
    ("read_iops_sec", THROTTLE_IOPS, "read"),
    ("write_iops_sec", THROTTLE_IOPS, "write"),
    ("total_bytes_sec", THROTTLE_BYTES, "total"),
    ("read_bytes_sec", THROTTLE_BYTES, "read"),
    ("write_bytes_sec", THROTTLE_BYTES, "write"),
)
"""The ``<iotune>`` elements exported: element, family, op."""


_RATES: Final = (
    ("reads", LAST_POLL_REQUESTS, "read"),
    ("writes", LAST_POLL_REQUESTS, "write"),
    ("read_bytes", LAST_POLL_BYTES, "read"),
    ("written_bytes", LAST_POLL_BYTES, "write"),
)
"""The counters whose last-poll rates are exported: attribute, family, op."""


@dataclass(frozen=True, slots=True)
class DiskStats:
    """One disk's counters (None where libvirt gave no usable value) and its caps."""

    device: str
    reads: int | None = None
    writes: int | None = None
    flushes: int | None = None
    read_bytes: int | None = None
    written_bytes: int | None = None
    read_time: int | None = None
    write_time: int | None = None
    caps: tuple[tuple[str, int], ...] = ()
    """(``<iotune>`` element, value) for each cap set, in :data:`_CAPS` order."""
    rates: tuple[tuple[str, float], ...] = ()
    """(counter attribute, per second) over the last poll interval, in :data:`_RATES` order;
    empty at a run's first listing."""


def with_rates(disk: DiskStats, before: DiskStats | None, elapsed_seconds: float) -> DiskStats:
    """``disk`` with the rates of its counters since ``before``, the same disk one listing
    earlier; a counter that went back (a disk replaced under the same name) has none."""
    if before is None or elapsed_seconds <= 0:
        return disk
    rates = []
    for attribute, _spec, _op in _RATES:
        now, then = getattr(disk, attribute), getattr(before, attribute)
        if now is not None and then is not None and now >= then:
            rates.append((attribute, (now - then) / elapsed_seconds))
    found = tuple(rates)
    return disk if found == disk.rates else replace(disk, rates=found)


def parse_block_stats(record: Mapping[str, object]) -> tuple[DiskStats, ...] | None:
    """Each disk of one domain's bulk-stats record (with its definition keys), by target.

    None where the record has no disk entry. A disk whose name is no target name, or repeats
    an earlier disk's, is left out.
    """
    # The suffix test first: a disk has a dozen keys, one of them its name.
    indexes = sorted(
        int(match.group(1))
        for key in record
        if isinstance(key, str)
        and key.endswith(".name")
        and key.startswith("block.")
        and (match := _INDEX.fullmatch(key))
    )
    if not indexes:
        return None
    disks: list[DiskStats] = []
    seen: set[str] = set()
    get = record.get
    for index in indexes[:MAX_DISKS]:
        name_key, counter_keys = _disk_keys(index)
        device = get(name_key)
        if not isinstance(device, str) or not _DEVICE.fullmatch(device) or device in seen:
            continue
        seen.add(device)
        reads, writes, flushes, read_bytes, written_bytes, read_time, write_time = (
            bounded_integer(get(key), MAX_COUNT) for key in counter_keys
        )
        caps = tuple(
            (element, value)
            for element, key in _cap_keys(device)
            if (value := bounded_integer(get(key), MAX_COUNT))
        )
        disks.append(
            DiskStats(
                device=device,
                reads=reads,
                writes=writes,
                flushes=flushes,
                read_bytes=read_bytes,
                written_bytes=written_bytes,
                read_time=read_time,
                write_time=write_time,
                caps=caps,
            )
        )
    return tuple(disks)


@functools.lru_cache(maxsize=MAX_DISKS)
def _disk_keys(index: int) -> tuple[str, tuple[str, ...]]:
    """The record keys of disk ``index``: its name's, and its counters' in :data:`_COUNTERS`
    order. Cached: every poll reads the same disks."""
    return f"block.{index}.name", tuple(f"block.{index}.{c.suffix}" for c in _COUNTERS)


@functools.lru_cache(maxsize=4 * MAX_DISKS)
def _cap_keys(device: str) -> tuple[tuple[str, str], ...]:
    """Each ``<iotune>`` element of :data:`_CAPS` and its record key for ``device``."""
    return tuple((element, f"{IOTUNE_PREFIX}{device}.{element}") for element, _spec, _op in _CAPS)


def iotune_keys(domain_xml: str) -> dict[str, object]:
    """The record keys of each disk's caps in a domain's XML: ``<disk><target dev=…/>
    <iotune><total_iops_sec>…`` becomes ``guestload.definition.iotune.<dev>.total_iops_sec``.

    Only positive integer caps of target-named disks; an XML that does not parse gives none.
    """
    try:
        root = ET.fromstring(domain_xml)  # noqa: S314 - the daemon's own XML, not the guest's
    except ET.ParseError:
        return {}
    keys: dict[str, object] = {}
    for disk in root.iterfind("./devices/disk"):
        target = disk.find("target")
        iotune = disk.find("iotune")
        device = None if target is None else target.get("dev")
        if iotune is None or device is None or not _DEVICE.fullmatch(device):
            continue
        for element, _spec, _op in _CAPS:
            text = iotune.findtext(element)
            if text is not None and text.strip().isdigit():
                value = int(text.strip())
                if 0 < value <= MAX_COUNT:
                    keys[f"{IOTUNE_PREFIX}{device}.{element}"] = value
    return keys


@dataclass(frozen=True, slots=True)
class BlockHostStat(HostStat):
    """The block group and the disks' caps, exported as ``guestload_disk_*``."""

    name = "block"
    stats_group = "VIR_DOMAIN_STATS_BLOCK"
    reads_definition = True

    @property
    def families(self) -> tuple[MetricSpec, ...]:
        return (
            *(counter.spec for counter in _COUNTERS),
            LAST_POLL_REQUESTS,
            LAST_POLL_BYTES,
            THROTTLE_IOPS,
            THROTTLE_BYTES,
        )

    def fold(self, previous: object | None, value: object, elapsed_seconds: float) -> object:
        if not isinstance(value, tuple) or not isinstance(previous, tuple):
            return value
        before = {disk.device: disk for disk in previous if isinstance(disk, DiskStats)}
        return tuple(
            with_rates(disk, before.get(disk.device), elapsed_seconds)
            if isinstance(disk, DiskStats)
            else disk
            for disk in value
        )

    def definition_keys(self, domain_xml: str) -> Mapping[str, object]:
        return iotune_keys(domain_xml)

    def parse(self, record: Mapping[str, object]) -> tuple[DiskStats, ...] | None:
        return parse_block_stats(record)

    def samples(self, value: object) -> Iterator[VmSample]:
        if not isinstance(value, tuple):
            return
        disks = [disk for disk in value if isinstance(disk, DiskStats)]
        for counter in _COUNTERS:
            for disk in disks:
                number = getattr(disk, counter.attribute)
                if number is not None:
                    scaled = number / NANOSECONDS if counter.seconds else float(number)
                    yield counter.spec, (disk.device,), scaled
        for spec in (LAST_POLL_REQUESTS, LAST_POLL_BYTES):
            for disk in disks:
                rates = dict(disk.rates)
                for attribute, rate_spec, op in _RATES:
                    if rate_spec is spec and attribute in rates:
                        yield spec, (disk.device, op), rates[attribute]
        for spec in (THROTTLE_IOPS, THROTTLE_BYTES):
            for disk in disks:
                caps = dict(disk.caps)
                for element, cap_spec, op in _CAPS:
                    if cap_spec is spec and element in caps:
                        yield spec, (disk.device, op), float(caps[element])


BLOCK = BlockHostStat()


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockOptions:
    """The block host stat's options (``--collector.block``)."""

    enabled: bool = True
    """Ask libvirt's bulk stats for the block group and export ``guestload_disk_*``."""


SIMULATED_IOPS_CAP: Final = 500
"""The total request cap of every simulated VM's disk."""
SIMULATED_REQUEST_BYTES: Final = 16384


def simulated_record(guest: SimulatedGuest) -> dict[str, object]:
    """One disk, ``vda``, capped at :data:`SIMULATED_IOPS_CAP` requests a second; a guest that
    waits for I/O a share of its time uses that share of the cap, over its uptime."""
    requests = int(guest.uptime_seconds * SIMULATED_IOPS_CAP * min(1.0, guest.wait_share))
    reads = requests * 3 // 4
    writes = requests - reads
    return {
        "block.count": 1,
        "block.0.name": "vda",
        "block.0.rd.reqs": reads,
        "block.0.rd.bytes": reads * SIMULATED_REQUEST_BYTES,
        "block.0.rd.times": reads * 2_000_000,
        "block.0.wr.reqs": writes,
        "block.0.wr.bytes": writes * SIMULATED_REQUEST_BYTES,
        "block.0.wr.times": writes * 4_000_000,
        "block.0.fl.reqs": writes // 8,
        "block.0.fl.times": writes * 1_000_000,
        f"{IOTUNE_PREFIX}vda.total_iops_sec": SIMULATED_IOPS_CAP,
    }


REGISTRATION = registration(
    name=BLOCK.name,
    defaults=BlockOptions(),
    flags=(
        CollectorFlag(
            "--collector.block",
            "enabled",
            "export each VM disk's requests as the host serves them and its throttle caps "
            "(guestload_disk_*, from libvirt's bulk stats and the domain's iotune; "
            "default: %(default)s)",
        ),
    ),
    build=lambda _options: BLOCK,
    families=BLOCK.families,
    simulated_record=simulated_record,
)
