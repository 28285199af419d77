"""The block host stat: each disk's requests from libvirt's bulk stats, its caps from the XML."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestload.hoststats.block import (
    BLOCK,
    IOTUNE_PREFIX,
    LAST_POLL_REQUESTS,
    MAX_COUNT,
    READ_TIME,
    READS,
    THROTTLE_BYTES,
    THROTTLE_IOPS,
    WRITES,
    DiskStats,
    iotune_keys,
    parse_block_stats,
    simulated_record,
)
from guestload.hoststats.hoststat import Kept, fold_values, read_definition
from guestload.registration import SimulatedGuest

DOMAIN_XML = """<domain type='qemu'><name>vm</name><devices>
  <disk type='file' device='disk'>
    <source file='/var/lib/a.raw'/><target dev='vda' bus='virtio'/>
    <iotune><total_iops_sec>5</total_iops_sec><read_bytes_sec>1048576</read_bytes_sec>
      <write_iops_sec>0</write_iops_sec><group_name>g</group_name></iotune>
  </disk>
  <disk type='file' device='disk'><target dev='vdb' bus='virtio'/></disk>
  <disk type='file' device='disk'><target dev='../etc' bus='virtio'/>
    <iotune><total_iops_sec>9</total_iops_sec></iotune></disk>
  <disk type='file' device='cdrom'><target dev='sdc' bus='sata'/>
    <iotune><read_iops_sec> 12 </read_iops_sec><write_iops_sec>-3</write_iops_sec>
      <total_bytes_sec>lots</total_bytes_sec></iotune></disk>
</devices></domain>"""


def test_caps_come_from_each_disk_s_iotune_and_zero_is_no_cap() -> None:
    assert iotune_keys(DOMAIN_XML) == {
        f"{IOTUNE_PREFIX}vda.total_iops_sec": 5,
        f"{IOTUNE_PREFIX}vda.read_bytes_sec": 1048576,
        f"{IOTUNE_PREFIX}sdc.read_iops_sec": 12,
    }


@pytest.mark.parametrize(
    "xml", ["", "<domain", "not xml at all", "<a><devices><disk/></devices></a>"]
)
def test_an_xml_that_holds_no_caps_gives_none(xml: str) -> None:
    assert iotune_keys(xml) == {}


def test_the_definition_is_read_only_by_host_stats_that_ask_for_it() -> None:
    assert BLOCK.reads_definition
    assert read_definition((BLOCK,), DOMAIN_XML) == iotune_keys(DOMAIN_XML)


def test_each_disk_is_read_with_its_caps_and_times_in_seconds() -> None:
    record = {
        "block.count": 2,
        "block.0.name": "vda",
        "block.0.rd.reqs": 300,
        "block.0.rd.times": 1_500_000_000,
        "block.0.wr.reqs": 2,
        "block.1.name": "vdb",
        "block.1.rd.reqs": 1,
        **iotune_keys(DOMAIN_XML),
    }
    disks = parse_block_stats(record)
    assert disks == (
        DiskStats(
            device="vda",
            reads=300,
            writes=2,
            read_time=1_500_000_000,
            caps=(("total_iops_sec", 5), ("read_bytes_sec", 1048576)),
        ),
        DiskStats(device="vdb", reads=1),
    )
    samples = [(spec, labels, value) for spec, labels, value in BLOCK.samples(disks)]
    assert (READS, ("vda",), 300.0) in samples
    assert (READ_TIME, ("vda",), 1.5) in samples
    assert (WRITES, ("vda",), 2.0) in samples
    assert (THROTTLE_IOPS, ("vda", "total"), 5.0) in samples
    assert (THROTTLE_BYTES, ("vda", "read"), 1048576.0) in samples
    assert not [s for s in samples if s[0] in (THROTTLE_IOPS, THROTTLE_BYTES) and s[1][0] == "vdb"]
    families = [spec for spec, _, _ in samples]
    assert families == sorted(families, key=BLOCK.families.index), "samples grouped by family"


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({}, None),
        ({"block.count": 1}, None),
        ({"block.0.name": 7, "block.0.rd.reqs": 1}, ()),
        ({"block.0.name": "vda; rm", "block.0.rd.reqs": 1}, ()),
        ({"block.0.name": "x" * 40}, ()),
        ({"block.0.name": "vda", "block.0.rd.reqs": -1}, (DiskStats(device="vda"),)),
        ({"block.0.name": "vda", "block.0.rd.reqs": MAX_COUNT + 1}, (DiskStats(device="vda"),)),
        ({"block.0.name": "vda", "block.0.rd.reqs": True}, (DiskStats(device="vda"),)),
        ({"block.0.name": "vda", "block.0.rd.reqs": "9"}, (DiskStats(device="vda"),)),
        ({"block.0.name": "vda", "block.0.rd.reqs": 1.5}, (DiskStats(device="vda"),)),
        (
            {"block.0.name": "vda", "block.1.name": "vda", "block.1.rd.reqs": 5},
            (DiskStats(device="vda"),),
        ),
        (
            {"block.0.name": "vda", f"{IOTUNE_PREFIX}vda.total_iops_sec": "5"},
            (DiskStats(device="vda"),),
        ),
    ],
)
def test_a_hostile_value_costs_only_itself_or_its_disk(
    record: Mapping[str, object], expected: tuple[DiskStats, ...] | None
) -> None:
    assert parse_block_stats(record) == expected


def test_a_record_with_thousands_of_disks_reads_only_the_first_ones() -> None:
    record: dict[str, object] = {f"block.{i}.name": f"vd{i}" for i in range(10_000)}
    disks = parse_block_stats(record)
    assert disks is not None
    assert len(disks) == 256
    assert disks[0].device == "vd0"


@given(
    st.dictionaries(
        st.one_of(
            st.sampled_from(
                ["block.0.name", "block.0.rd.reqs", "block.1.name", "block.1.wr.times"]
            ),
            st.text(max_size=20),
        ),
        st.one_of(st.integers(), st.text(max_size=10), st.floats(), st.none(), st.booleans()),
        max_size=8,
    )
)
@settings(max_examples=300, deadline=None, database=None)
def test_no_record_makes_the_parser_raise(record: dict[str, object]) -> None:
    disks = parse_block_stats(record)
    if disks is not None:
        list(BLOCK.samples(disks))


def test_a_simulated_vm_uses_its_wait_share_of_its_cap() -> None:
    guest = SimulatedGuest(
        loads=(1.0, 1.0, 1.0),
        busy_seconds=10.0,
        uptime_seconds=100.0,
        vcpu_weights=(1.0,),
        wait_share=0.5,
        delay_share=0.0,
    )
    (disk,) = BLOCK.parse(simulated_record(guest)) or ()
    assert disk.device == "vda"
    assert (disk.reads or 0) + (disk.writes or 0) == 100 * 500 // 2
    assert disk.caps == (("total_iops_sec", 500),)


def _disks(**devices: int) -> tuple[DiskStats, ...]:
    record: dict[str, object] = {}
    for index, (device, reads) in enumerate(devices.items()):
        record |= {f"block.{index}.name": device, f"block.{index}.rd.reqs": reads}
    disks = parse_block_stats(record)
    assert disks is not None
    return disks


def test_the_last_poll_rates_are_each_disk_s_counters_over_the_interval() -> None:
    folded = BLOCK.fold(_disks(vda=100, vdb=50, vdc=9), _disks(vda=700, vdb=40, vdd=1), 120.0)
    assert isinstance(folded, tuple)
    by_device = {disk.device: dict(disk.rates) for disk in folded}
    assert by_device == {
        "vda": {"reads": 5.0},
        "vdb": {},  # went back: replaced under the same name, no rate
        "vdd": {},  # new since the last listing
    }
    samples = list(BLOCK.samples(folded))
    assert (LAST_POLL_REQUESTS, ("vda", "read"), 5.0) in samples


@pytest.mark.parametrize(("previous", "elapsed"), [(None, 120.0), ("odd", 120.0)])
def test_without_a_previous_listing_there_is_no_rate(previous: object, elapsed: float) -> None:
    assert BLOCK.fold(previous, _disks(vda=1), elapsed) == _disks(vda=1)


def test_no_time_between_listings_gives_no_rate() -> None:
    assert BLOCK.fold(_disks(vda=1), _disks(vda=5), 0.0) == _disks(vda=5)


class _FoldRaises(type(BLOCK)):  # type: ignore[misc]
    def fold(self, previous: object | None, value: object, elapsed_seconds: float) -> object:
        raise RuntimeError("broken")


def test_a_fold_that_raises_keeps_the_unfolded_value() -> None:
    kept = fold_values((_FoldRaises(),), {"block": _disks(vda=3)}, {}, 10.0)
    assert kept == {"block": Kept(value=_disks(vda=3), read_at=10.0)}
