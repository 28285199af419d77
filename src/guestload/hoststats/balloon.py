"""The guest's memory as its balloon reports it: libvirt's ``VIR_DOMAIN_STATS_BALLOON`` group.

libvirt reports ``balloon.current`` (the memory the balloon leaves the guest) and
``balloon.maximum`` (the VM's memory) in KiB for every domain, from the domain's definition.
Where the balloon has a statistics period (``<memballoon><stats period='10'/>``, as KubeVirt
sets it), the guest's virtio-balloon driver reports its own view too: ``balloon.swap_in``,
``balloon.swap_out``, ``balloon.unused``, ``balloon.available``, ``balloon.usable`` and
``balloon.disk_caches`` in KiB, ``balloon.major_fault`` and ``balloon.minor_fault`` as counts,
and ``balloon.last-update``, the Unix time QEMU last received them. Those come from the guest
and are untrusted: a field that is not an integer, is negative, or is larger than it can be is
left out for that VM; the others stay. Exported in bytes and counts, under ``guestload_memory_*``
rather than ``kubevirt_vmi_memory_*``, the names KubeVirt's virt-handler exports from the same
group.

In libvirt's QEMU driver the guest's part costs one QMP round trip per domain, inside the job
the vCPU group already takes; a domain whose job is taken (the bulk call does not wait) reports
only ``balloon.current`` and ``balloon.maximum`` that poll.

Each listing also folds the swap-in and major-fault counters with the domain run's previous
listing into their rates over the guest's last statistics interval (``guestload_memory_last_
poll_*``, divided by the difference of ``balloon.last-update``, else by the poll interval): a
guest that starts to thrash shows at its next poll, where a rate over a window lags. A listing
with no newer statistics keeps the last rates, for at most :data:`MAX_RATE_AGE_SECONDS`.

Registered as :data:`REGISTRATION`: ``--collector.balloon`` (on by default) reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from guestload.hoststats.hoststat import HostStat, bounded_integer
from guestload.hoststats.registry import registration
from guestload.metricspec import VM_LABELS, MetricSpec, MetricType, VmSample
from guestload.registration import CollectorFlag, SimulatedGuest

KIB: Final = 1024
MAX_COUNT: Final = 2**63 - 1
"""libvirt's values are unsigned 64-bit; above the signed range is broken or hostile."""
MAX_KIB: Final = MAX_COUNT // KIB
"""The most KiB whose bytes stay within :data:`MAX_COUNT`."""
MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799
"""The end of year 9999: a later ``balloon.last-update`` is no clock's."""

MAX_RATE_AGE_SECONDS: Final = 600.0
"""How long a listing without newer guest statistics keeps the last rates: the rules' rate
window, after which the 10-minute rates say as much."""

_PERIOD_NOTE = (
    " Reported by the guest's balloon driver only where the VM's balloon has a statistics "
    "period (libvirt's {key})."
)

BALLOON_BYTES = MetricSpec(
    "guestload_memory_balloon_bytes",
    MetricType.GAUGE,
    "Memory the VM's balloon leaves the guest, in bytes: the VM's memory less what the balloon "
    "took back (libvirt's balloon.current).",
    VM_LABELS,
)
AVAILABLE_BYTES = MetricSpec(
    "guestload_memory_available_bytes",
    MetricType.GAUGE,
    "Memory the guest kernel sees (its MemTotal), in bytes."
    + _PERIOD_NOTE.format(key="balloon.available"),
    VM_LABELS,
)
USABLE_BYTES = MetricSpec(
    "guestload_memory_usable_bytes",
    MetricType.GAUGE,
    "Memory the guest could use without swapping (free memory and reclaimable caches, its "
    "MemAvailable), in bytes." + _PERIOD_NOTE.format(key="balloon.usable"),
    VM_LABELS,
)
UNUSED_BYTES = MetricSpec(
    "guestload_memory_unused_bytes",
    MetricType.GAUGE,
    "Memory the guest leaves entirely unused (its MemFree), in bytes."
    + _PERIOD_NOTE.format(key="balloon.unused"),
    VM_LABELS,
)
SWAP_IN_BYTES = MetricSpec(
    "guestload_memory_swap_in_bytes",
    MetricType.COUNTER,
    "Data the guest read back from its swap space, in bytes; grows while the guest thrashes."
    + _PERIOD_NOTE.format(key="balloon.swap_in"),
    VM_LABELS,
)
SWAP_OUT_BYTES = MetricSpec(
    "guestload_memory_swap_out_bytes",
    MetricType.COUNTER,
    "Data the guest wrote out to its swap space, in bytes."
    + _PERIOD_NOTE.format(key="balloon.swap_out"),
    VM_LABELS,
)
MAJOR_FAULTS = MetricSpec(
    "guestload_memory_major_faults",
    MetricType.COUNTER,
    "Page faults of the guest that needed disk I/O (swap or file pages)."
    + _PERIOD_NOTE.format(key="balloon.major_fault"),
    VM_LABELS,
)
MINOR_FAULTS = MetricSpec(
    "guestload_memory_minor_faults",
    MetricType.COUNTER,
    "Page faults of the guest served without disk I/O."
    + _PERIOD_NOTE.format(key="balloon.minor_fault"),
    VM_LABELS,
)
STATS_UPDATE_TIMESTAMP = MetricSpec(
    "guestload_memory_stats_update_timestamp_seconds",
    MetricType.GAUGE,
    "Unix time at which QEMU last received the guest's memory statistics; 0 before the first. "
    "Older than the statistics period: the other guestload_memory_* values are stale."
    + _PERIOD_NOTE.format(key="balloon.last-update"),
    VM_LABELS,
)


LAST_POLL_SWAP_IN = MetricSpec(
    "guestload_memory_last_poll_swap_in_bytes_per_second",
    MetricType.GAUGE,
    "Data the guest read back from its swap space per second, over its last statistics "
    "interval before the exporter's last poll." + _PERIOD_NOTE.format(key="balloon.swap_in"),
    VM_LABELS,
)
LAST_POLL_MAJOR_FAULTS = MetricSpec(
    "guestload_memory_last_poll_major_faults_per_second",
    MetricType.GAUGE,
    "Page faults of the guest that needed disk I/O per second, over its last statistics "
    "interval before the exporter's last poll." + _PERIOD_NOTE.format(key="balloon.major_fault"),
    VM_LABELS,
)
_RATES: Final = (
    ("swap_in_bytes", LAST_POLL_SWAP_IN),
    ("major_faults", LAST_POLL_MAJOR_FAULTS),
)
"""The counters folded into last-poll rates, and their families."""


@dataclass(frozen=True, slots=True)
class _Field:
    """One exported libvirt key: where it goes, its unit and its bound."""

    key: str
    attribute: str
    spec: MetricSpec
    scale: int
    """Bytes per unit (KiB fields) or 1."""
    limit: int
    """The largest value accepted, in the key's own unit."""
    guest_size: bool = False
    """A size the guest reports: never more than the VM's memory (``balloon.maximum``)."""


_FIELDS: Final = (
    _Field("balloon.current", "balloon_bytes", BALLOON_BYTES, KIB, MAX_KIB),
    _Field("balloon.available", "available_bytes", AVAILABLE_BYTES, KIB, MAX_KIB, True),
    _Field("balloon.usable", "usable_bytes", USABLE_BYTES, KIB, MAX_KIB, True),
    _Field("balloon.unused", "unused_bytes", UNUSED_BYTES, KIB, MAX_KIB, True),
    _Field("balloon.swap_in", "swap_in_bytes", SWAP_IN_BYTES, KIB, MAX_KIB),
    _Field("balloon.swap_out", "swap_out_bytes", SWAP_OUT_BYTES, KIB, MAX_KIB),
    _Field("balloon.major_fault", "major_faults", MAJOR_FAULTS, 1, MAX_COUNT),
    _Field("balloon.minor_fault", "minor_faults", MINOR_FAULTS, 1, MAX_COUNT),
    _Field(
        "balloon.last-update",
        "update_timestamp_seconds",
        STATS_UPDATE_TIMESTAMP,
        1,
        MAX_TIMESTAMP_SECONDS,
    ),
)
"""The exported keys, in exposition order."""
MAXIMUM_KEY: Final = "balloon.maximum"


@dataclass(frozen=True, slots=True)
class BalloonStats:
    """One VM's balloon statistics in bytes and counts; None where libvirt reported no
    usable value."""

    balloon_bytes: int | None = None
    available_bytes: int | None = None
    usable_bytes: int | None = None
    unused_bytes: int | None = None
    swap_in_bytes: int | None = None
    swap_out_bytes: int | None = None
    major_faults: int | None = None
    minor_faults: int | None = None
    update_timestamp_seconds: int | None = None
    rates: tuple[tuple[str, float], ...] = ()
    """Counter attribute and its rate per second over the last statistics interval."""
    rates_age_seconds: float = 0.0
    """How long ago (poll time) the listing that computed ``rates`` was."""


def with_rates(now: BalloonStats, before: BalloonStats, elapsed_seconds: float) -> BalloonStats:
    """``now`` with the rates of its counters since ``before``, one listing earlier.

    The interval is the guest's own (the difference of their update timestamps) where both
    have one, else the poll interval. Without newer statistics (the same timestamp) the last
    rates stay, ageing, until :data:`MAX_RATE_AGE_SECONDS`. A counter that went back (a guest
    that rebooted its balloon driver) has no rate.
    """
    stamp_now, stamp_then = now.update_timestamp_seconds, before.update_timestamp_seconds
    if stamp_now is not None and stamp_then is not None:
        if stamp_now == stamp_then:
            age = before.rates_age_seconds + elapsed_seconds
            if age > MAX_RATE_AGE_SECONDS:
                return now
            return replace(now, rates=before.rates, rates_age_seconds=age)
        interval = float(stamp_now - stamp_then)
    else:
        interval = elapsed_seconds
    if interval <= 0:
        return now
    rates = []
    for attribute, _spec in _RATES:
        value, earlier = getattr(now, attribute), getattr(before, attribute)
        if value is not None and earlier is not None and value >= earlier:
            rates.append((attribute, (value - earlier) / interval))
    found = tuple(rates)
    return now if found == now.rates else replace(now, rates=found)


def parse_balloon_stats(record: Mapping[str, object]) -> BalloonStats | None:
    """The balloon statistics of one domain's bulk-stats record; None without any.

    Each field is an integer from 0 to its bound, or left out: sizes the guest reports are
    bounded by ``balloon.maximum`` where libvirt gives a usable one.
    """
    maximum = bounded_integer(record.get(MAXIMUM_KEY), MAX_KIB)
    values: dict[str, Any] = {}
    for field in _FIELDS:
        raw = record.get(field.key)
        if raw is None:  # the guest's part, where the balloon has no statistics period
            continue
        limit = maximum if field.guest_size and maximum is not None else field.limit
        value = bounded_integer(raw, limit)
        if value is not None:
            values[field.attribute] = value * field.scale
    if not values:
        return None
    return BalloonStats(**values)


@dataclass(frozen=True, slots=True)
class BalloonHostStat(HostStat):
    """The balloon group, exported as ``guestload_memory_*``."""

    name = "balloon"
    stats_group = "VIR_DOMAIN_STATS_BALLOON"

    @property
    def families(self) -> tuple[MetricSpec, ...]:
        return (*(field.spec for field in _FIELDS), *(spec for _attribute, spec in _RATES))

    def fold(self, previous: object | None, value: object, elapsed_seconds: float) -> object:
        if not isinstance(value, BalloonStats) or not isinstance(previous, BalloonStats):
            return value
        return with_rates(value, previous, elapsed_seconds)

    def parse(self, record: Mapping[str, object]) -> BalloonStats | None:
        return parse_balloon_stats(record)

    def samples(self, value: object) -> Iterator[VmSample]:
        if not isinstance(value, BalloonStats):
            return
        for field in _FIELDS:
            number = getattr(value, field.attribute)
            if number is not None:
                yield field.spec, (), float(number)
        rates = dict(value.rates)
        for attribute, spec in _RATES:
            if attribute in rates:
                yield spec, (), rates[attribute]


BALLOON = BalloonHostStat()


@dataclass(frozen=True, slots=True, kw_only=True)
class BalloonOptions:
    """The balloon host stat's options (``--collector.balloon``)."""

    enabled: bool = True
    """Ask libvirt's bulk stats for the balloon group and export ``guestload_memory_*``."""


THRASHING_SWAP_KIB_PER_SECOND: Final = 4096
"""How fast a thrashing simulated guest reads swap back (4 MiB/s), and about as fast writes it."""
KERNEL_RESERVED_SHARE: Final = 0.03
"""The share of a guest's memory its kernel keeps for itself (MemTotal is the rest)."""


def simulated_record(guest: SimulatedGuest) -> dict[str, object]:
    """The balloon keys libvirt reports for a simulated VM: the balloon size always, the
    guest's view where its balloon has a statistics period. An idle guest's swap does not grow;
    a thrashing one's grows with its uptime."""
    memory = guest.memory
    size = memory.size_kib
    record: dict[str, object] = {"balloon.current": size, MAXIMUM_KEY: size}
    if not memory.stats_period:
        return record
    available = int(size * (1.0 - KERNEL_RESERVED_SHARE))
    usable = int(available * (1.0 - memory.used_share))
    caches = usable // 2
    swapped_in = (
        int(guest.uptime_seconds * THRASHING_SWAP_KIB_PER_SECOND) if memory.thrashing else 0
    )
    record |= {
        "balloon.swap_in": swapped_in,
        "balloon.swap_out": swapped_in + swapped_in // 4,
        "balloon.major_fault": int(guest.uptime_seconds / 50) + swapped_in // 4,
        "balloon.minor_fault": int(guest.busy_seconds * 2000),
        "balloon.unused": usable - caches,
        "balloon.available": available,
        "balloon.usable": usable,
        "balloon.disk_caches": caches,
        "balloon.last-update": int(memory.updated_at_seconds),
        "balloon.rss": min(size, int(size * (memory.used_share + 0.1))),
    }
    return record


REGISTRATION = registration(
    name=BALLOON.name,
    defaults=BalloonOptions(),
    flags=(
        CollectorFlag(
            "--collector.balloon",
            "enabled",
            "export each VM's memory as its balloon reports it (guestload_memory_*, from "
            "libvirt's bulk stats; off where KubeVirt's virt-handler already exports "
            "kubevirt_vmi_memory_*; default: %(default)s)",
        ),
    ),
    build=lambda _options: BALLOON,
    families=BALLOON.families,
    simulated_record=simulated_record,
)
