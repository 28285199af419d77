"""The real-VM lab's domain XML: the balloon and swap-disk options, and balloon-stat rates."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from guestload_lab.image import SWAP_DISK_SERIAL, GuestImage
from guestload_lab.vm import BalloonSample, VmSpec, domain_xml

IMAGE = GuestImage(kernel=Path("/cache/vmlinuz"), initrd=Path("/cache/initramfs.img.gz"))
SERIAL = Path("/logs/vm.serial.log")


def _devices(xml: str) -> ET.Element:
    devices = ET.fromstring(xml).find("devices")  # noqa: S314  (XML this test built)
    assert devices is not None
    return devices


def _attribute(element: ET.Element, child: str, name: str) -> str | None:
    found = element.find(child)
    return None if found is None else found.get(name)


def test_without_the_options_there_is_no_balloon_and_no_disk() -> None:
    devices = _devices(domain_xml(VmSpec(name="plain"), IMAGE, serial_log=SERIAL))
    balloons = devices.findall("memballoon")
    assert [balloon.attrib for balloon in balloons] == [{"model": "none"}]
    assert list(balloons[0]) == []
    assert devices.findall("disk") == []


def test_a_stats_period_adds_a_virtio_balloon_reporting_that_often() -> None:
    spec = VmSpec(name="ballooned", balloon_stats_period=2)
    (balloon,) = _devices(domain_xml(spec, IMAGE, serial_log=SERIAL)).findall("memballoon")
    assert balloon.get("model") == "virtio"
    assert _attribute(balloon, "stats", "period") == "2"


def test_the_swap_disk_comes_after_the_throttled_disk_and_carries_the_swap_serial() -> None:
    spec = VmSpec(name="both", disk_iops=5, swap_mib=256)
    xml = domain_xml(
        spec, IMAGE, serial_log=SERIAL, disk=Path("/logs/vda.raw"), swap_disk=Path("/logs/s.raw")
    )
    throttled, swap = _devices(xml).findall("disk")
    assert [_attribute(disk, "target", "dev") for disk in (throttled, swap)] == ["vda", "vdb"]
    assert throttled.find("iotune") is not None
    assert swap.find("iotune") is None
    assert swap.findtext("serial") == SWAP_DISK_SERIAL
    assert _attribute(swap, "source", "file") == "/logs/s.raw"
    assert _attribute(swap, "driver", "cache") == "unsafe"


@pytest.mark.parametrize(
    ("spec", "files"),
    [
        (VmSpec(name="no-file", swap_mib=64), {}),
        (VmSpec(name="no-size"), {"swap_disk": Path("/logs/s.raw")}),
        (VmSpec(name="zero-period", balloon_stats_period=0), {}),
    ],
)
def test_inconsistent_swap_or_balloon_settings_are_refused(
    spec: VmSpec, files: dict[str, Path]
) -> None:
    with pytest.raises(ValueError, match=r"swap|balloon"):
        domain_xml(spec, IMAGE, serial_log=SERIAL, **files)


def _balloon(at: float, last_update: int, **stats: int) -> BalloonSample:
    return BalloonSample(at=at, stats={"last-update": last_update, **stats})


def test_balloon_rates_are_per_second_of_the_guest_reports_between_the_samples() -> None:
    before = _balloon(0.0, 1000, swap_in=1024, swap_out=0, major_fault=10, minor_fault=5)
    after = _balloon(9.0, 1010, swap_in=205_824, swap_out=10_240, major_fault=15_010, minor_fault=5)
    assert before.rates(after) == {
        "swap_in": 20_480.0,
        "swap_out": 1_024.0,
        "major_fault": 1_500.0,
        "minor_fault": 0.0,
    }


def test_no_balloon_rates_without_a_new_guest_report() -> None:
    before = _balloon(0.0, 1000, swap_in=0)
    assert before.rates(_balloon(10.0, 1000, swap_in=4096)) is None
    assert BalloonSample(at=0.0, stats={}).rates(before) is None
