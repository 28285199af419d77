"""Identity modes and Nova (OpenStack) domain metadata."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from guestload.identity import (
    KUBEVIRT_METADATA_NAMESPACE,
    KUBEVIRT_UID_KEY,
    NOVA_METADATA_NAMESPACES,
    NOVA_NAME_KEY,
    NOVA_PROJECT_NAME_KEY,
    NOVA_PROJECT_UUID_KEY,
    IdentityMode,
    IdentityResolver,
    metadata_readers_for,
    parse_nova_metadata,
)
from guestload.model import Identity
from guestload.sources.libvirt import LibvirtSource
from tests.unit.fakes import domain

NOVA_ELEMENT = """<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
  <nova:package version="29.0.1"/>
  <nova:name>web-1</nova:name>
  <nova:creationTime>2026-11-28 10:00:00</nova:creationTime>
  <nova:flavor name="m1.small"><nova:vcpus>1</nova:vcpus></nova:flavor>
  <nova:owner>
    <nova:user uuid="0b7c">admin</nova:user>
    <nova:project uuid="5f1e9a">shop</nova:project>
  </nova:owner>
</nova:instance>"""

NOVA = {NOVA_NAME_KEY: "web-1", NOVA_PROJECT_NAME_KEY: "shop", NOVA_PROJECT_UUID_KEY: "5f1e9a"}
KUBEVIRT = {KUBEVIRT_UID_KEY: "kv-1"}


def test_nova_metadata_gives_name_and_project() -> None:
    assert parse_nova_metadata(NOVA_ELEMENT) == NOVA


@pytest.mark.parametrize(
    "element",
    [
        "<instance/>",
        "not xml",
        '<nova:instance xmlns:nova="n"><nova:name> </nova:name></nova:instance>',
        '<nova:instance xmlns:nova="n"><nova:owner><nova:project uuid="p">x</nova:project>'
        "</nova:owner></nova:instance>",
    ],
)
def test_nova_metadata_without_a_name_gives_no_hints(element: str) -> None:
    assert parse_nova_metadata(element) == {}


def test_a_project_without_a_name_keeps_its_uuid() -> None:
    element = '<i xmlns="n"><name>vm</name><owner><project uuid="p-1"/></owner></i>'  # no text
    assert parse_nova_metadata(element) == {NOVA_NAME_KEY: "vm", NOVA_PROJECT_UUID_KEY: "p-1"}


@pytest.mark.parametrize(
    ("mode", "name", "metadata", "expected"),
    [
        (IdentityMode.AUTO, "prod_web", KUBEVIRT, ("prod", "web")),
        (IdentityMode.AUTO, "instance-0000002a", NOVA, ("shop", "web-1")),
        (IdentityMode.AUTO, "prod_web", {**KUBEVIRT, **NOVA}, ("prod", "web")),
        (IdentityMode.AUTO, "plain", {}, ("libvirt", "plain")),
        (IdentityMode.KUBEVIRT, "instance-0000002a", NOVA, ("libvirt", "instance-0000002a")),
        (IdentityMode.OPENSTACK, "prod_web", KUBEVIRT, ("libvirt", "prod_web")),
        (IdentityMode.OPENSTACK, "instance-0000002a", NOVA, ("shop", "web-1")),
        (
            IdentityMode.OPENSTACK,
            "instance-1",
            {NOVA_NAME_KEY: "db", NOVA_PROJECT_UUID_KEY: "p-1"},
            ("p-1", "db"),
        ),
        (IdentityMode.OPENSTACK, "instance-1", {NOVA_NAME_KEY: "db"}, ("libvirt", "db")),
        (IdentityMode.LIBVIRT, "prod_web", KUBEVIRT, ("libvirt", "prod_web")),
        (IdentityMode.LIBVIRT, "instance-0000002a", NOVA, ("libvirt", "instance-0000002a")),
    ],
)
def test_identity_modes(
    mode: IdentityMode, name: str, metadata: dict[str, str], expected: tuple[str, str]
) -> None:
    resolver = IdentityResolver(node="n1", default_namespace="libvirt", mode=mode)
    assert resolver.resolve(domain("u", name, metadata=metadata)) == Identity(*expected, "n1")


def test_each_mode_reads_only_the_metadata_it_needs() -> None:
    def uris(mode: IdentityMode) -> list[str]:
        return [reader.namespace_uri for reader in metadata_readers_for(mode)]

    assert uris(IdentityMode.AUTO) == [KUBEVIRT_METADATA_NAMESPACE, *NOVA_METADATA_NAMESPACES]
    assert uris(IdentityMode.KUBEVIRT) == [KUBEVIRT_METADATA_NAMESPACE]
    assert uris(IdentityMode.OPENSTACK) == list(NOVA_METADATA_NAMESPACES)
    assert uris(IdentityMode.LIBVIRT) == []


class _NovaDomain:
    """A domain carrying only Nova 1.0 metadata; records which namespaces were asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def UUIDString(self) -> str:  # noqa: N802 - libvirt's name
        return "6bb3bc65-91c3-486c-b853-2a5c879a5395"

    def name(self) -> str:
        return "instance-000001ae"

    def ID(self) -> int:  # noqa: N802 - libvirt's name
        return 3

    def metadata(self, kind: int, uri: str, flags: int) -> str:
        self.asked.append(uri)
        if uri != NOVA_METADATA_NAMESPACES[1]:
            error = libvirt.libvirtError("metadata not found")
            error.err = (libvirt.VIR_ERR_NO_DOMAIN_METADATA, 0, "metadata not found", 0)
            raise error
        return NOVA_ELEMENT.replace("nova/1.1", "nova/1.0")


class _Connection:
    def __init__(self, dom: _NovaDomain) -> None:
        self.dom = dom

    def getLibVersion(self) -> int:  # noqa: N802 - libvirt's name
        return 11_003_000

    def setKeepAlive(self, interval: int, count: int) -> int:  # noqa: N802 - libvirt's name
        return 0

    def registerCloseCallback(self, *args: Any) -> int:  # noqa: N802 - libvirt's name
        return 0

    def domainEventRegisterAny(self, *args: Any) -> int:  # noqa: N802 - libvirt's name
        return 1

    def getAllDomainStats(self, groups: int, flags: int) -> list[tuple[Any, dict[str, Any]]]:  # noqa: N802
        return [(self.dom, {"state.state": 1})]

    def domainEventDeregisterAny(self, callback_id: int) -> int:  # noqa: N802 - libvirt's name
        return 0

    def unregisterCloseCallback(self) -> int:  # noqa: N802 - libvirt's name
        return 0

    def isAlive(self) -> bool:  # noqa: N802 - libvirt's name
        return True

    def close(self) -> int:
        return 0


def test_nova_metadata_is_read_once_falling_back_to_older_namespaces() -> None:
    nova_domain = _NovaDomain()
    source = LibvirtSource(
        uri="test:///fake",
        metadata_readers=metadata_readers_for(IdentityMode.AUTO),
        open_connection=lambda _uri: _Connection(nova_domain),
    )
    source.connect()
    try:
        for _ in range(3):
            (inventory,) = source.list_running_domains()
            assert inventory.metadata == NOVA
    finally:
        source.close()
    assert nova_domain.asked == [KUBEVIRT_METADATA_NAMESPACE, *NOVA_METADATA_NAMESPACES]
