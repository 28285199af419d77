"""OpenStack mode against a real libvirt daemon: domains defined with Nova's metadata."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import libvirt
import pytest

from guestload.cli.daemon import make_poller
from guestload.cli.flags import build_parser, settings_from_args
from guestload.exposition.cache import MetricsCache
from guestload.exposition.schema import MetricSet
from guestload.sources.catalog import make_source
from guestload_lab.libvirtd import TestDriverLibvirtd
from tests.exposition import scraped
from tests.unit.fakes import LOAD_ONLY

pytestmark = pytest.mark.daemon

PROJECT_UUID = "5f1e9a0c6d2b4c8e9a7b3d1f2e4c6a8b"


def _nova_domain_xml(*, domain_name: str, instance_uuid: str, name: str, project: str) -> str:
    return f"""<domain type='test'>
  <name>{domain_name}</name>
  <uuid>{instance_uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type>hvm</type></os>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="29.0.1"/>
      <nova:name>{name}</nova:name>
      <nova:creationTime>2026-11-28 10:00:00</nova:creationTime>
      <nova:flavor name="m1.small"><nova:memory>64</nova:memory><nova:vcpus>1</nova:vcpus>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="0b7c1d2e3f4a5b6c7d8e9f0a1b2c3d4e">admin</nova:user>
        <nova:project uuid="{PROJECT_UUID}">{project}</nova:project>
      </nova:owner>
    </nova:instance>
  </metadata>
</domain>"""


class Compute:
    """The daemon, a connection that keeps the test driver's state alive, and the instances."""

    def __init__(self, daemon: TestDriverLibvirtd, keeper: libvirt.virConnect) -> None:
        self.daemon = daemon
        self.keeper = keeper
        self.instances: dict[str, str] = {}

    def boot(self, *, domain_name: str, name: str, project: str) -> str:
        """Define and start an instance with ``virsh``, as Nova's libvirt driver would."""
        instance_uuid = str(uuid.uuid4())
        xml = self.daemon.directory / f"{domain_name}.xml"
        xml.write_text(
            _nova_domain_xml(
                domain_name=domain_name, instance_uuid=instance_uuid, name=name, project=project
            )
        )
        for command in (["define", str(xml)], ["start", domain_name]):
            subprocess.run(
                ["virsh", "-q", "-c", self.daemon.uri, *command],
                check=True,
                capture_output=True,
                timeout=30,
            )
        self.instances[domain_name] = instance_uuid
        return instance_uuid


@pytest.fixture
def compute(test_driver_daemon: TestDriverLibvirtd) -> Iterator[Compute]:
    # The test driver drops its state when the last connection closes: hold one open.
    keeper = libvirt.open(test_driver_daemon.uri)
    try:
        keeper.lookupByName("test").destroy()
        yield Compute(test_driver_daemon, keeper)
    finally:
        keeper.close()


def _probe(uri: str, *flags: str) -> dict[str, dict[str, object]]:
    command = [sys.executable, "-m", "guestload", "probe", "--libvirt.uri", uri]
    result = subprocess.run(
        [*command, "--output", "json", "--node", "compute-1", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {str(row["domain"]): row for row in json.loads(result.stdout)["domains"]}


def test_nova_instances_are_named_by_project_and_instance_name(compute: Compute) -> None:
    web = compute.boot(domain_name="instance-0000002a", name="web-1", project="shop")
    db = compute.boot(domain_name="instance-0000002b", name="db", project="billing")
    for mode in ("auto", "openstack"):
        rows = _probe(compute.daemon.uri, "--identity.mode", mode)
        assert {d: (r["namespace"], r["name"], r["uuid"]) for d, r in rows.items()} == {
            "instance-0000002a": ("shop", "web-1", web),
            "instance-0000002b": ("billing", "db", db),
        }, mode


def test_libvirt_mode_ignores_nova_metadata(compute: Compute) -> None:
    compute.boot(domain_name="instance-0000002a", name="web-1", project="shop")
    rows = _probe(compute.daemon.uri, "--identity.mode", "libvirt")
    row = rows["instance-0000002a"]
    assert (row["namespace"], row["name"]) == ("libvirt", "instance-0000002a")


def test_the_instance_uuid_is_exported_next_to_the_load_series_labels(compute: Compute) -> None:
    web = compute.boot(domain_name="instance-0000002a", name="web-1", project="shop")
    args = build_parser().parse_args(
        ["serve", "--libvirt.uri", compute.daemon.uri, "--node", "compute-1"]
    )
    settings = settings_from_args(args)
    cache = MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True))
    poller = make_poller(settings, make_source(settings), cache)
    try:
        snapshot = poller.poll()
    finally:
        poller.close()
    assert snapshot.source_up
    text = scraped(cache).decode()
    assert (
        f'guestload_domain_info{{domain="instance-0000002a",name="web-1",namespace="shop",'
        f'node="compute-1",uuid="{web}"}} 1.0'
    ) in text
    assert (
        'guestload_agent_state{name="web-1",namespace="shop",node="compute-1",'
        'query="load",state="unsupported"} 1.0'
    ) in text
