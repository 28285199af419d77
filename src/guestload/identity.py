"""Domain -> the (namespace, name, node) labels a VM is known by.

Everything about naming VMs lives here: the platforms' metadata elements (KubeVirt, Nova) and
how they are parsed into hints, which of them an identity mode reads, and how hints and domain
names become labels. Pure: the libvirt source only fetches the elements this module names.
"""

from __future__ import annotations

import enum
import os
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from guestload.model import DomainInventory, Identity

#: Metadata key the libvirt source fills from ``<kubevirt xmlns="http://kubevirt.io"><uid>``.
KUBEVIRT_UID_KEY = "kubevirt.uid"
#: Metadata keys the libvirt source fills from Nova's ``<nova:instance>`` element.
NOVA_NAME_KEY = "nova.name"
NOVA_PROJECT_NAME_KEY = "nova.project.name"
NOVA_PROJECT_UUID_KEY = "nova.project.uuid"

KUBEVIRT_METADATA_NAMESPACE = "http://kubevirt.io"
"""XML namespace of the ``<kubevirt>`` element KubeVirt writes into a domain's metadata."""

NOVA_METADATA_NAMESPACES = (
    "http://openstack.org/xmlns/libvirt/nova/1.1",
    "http://openstack.org/xmlns/libvirt/nova/1.0",
)
"""XML namespaces of Nova's ``<nova:instance>`` element, newest first."""


class IdentityMode(enum.StrEnum):
    """Which platform's naming to trust (``--identity.mode``)."""

    AUTO = "auto"
    """KubeVirt metadata wins, then Nova metadata, then the plain domain name."""
    KUBEVIRT = "kubevirt"
    """KubeVirt's ``<namespace>_<vmi>`` domains; any other domain is named plainly."""
    OPENSTACK = "openstack"
    """Nova's instance name and project; any other domain is named plainly."""
    LIBVIRT = "libvirt"
    """Every domain by its own name in the default namespace."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityResolver:
    """Names VMs the way the platform that created them does.

    KubeVirt names a VMI's domain ``<namespace>_<vmi>`` and marks it with KubeVirt metadata;
    Kubernetes namespaces cannot contain ``_``, so the first ``_`` splits the two. Nova names
    its domains ``instance-<hex>`` and writes the instance's name and project into the domain
    metadata: the project becomes the namespace. Any other domain keeps its own name and gets
    ``default_namespace``.
    """

    node: str
    default_namespace: str
    mode: IdentityMode = IdentityMode.AUTO

    def resolve(self, domain: DomainInventory) -> Identity:
        if self.mode in (IdentityMode.AUTO, IdentityMode.KUBEVIRT):
            kubevirt = self._kubevirt(domain)
            if kubevirt is not None:
                return kubevirt
        if self.mode in (IdentityMode.AUTO, IdentityMode.OPENSTACK):
            nova = self._nova(domain)
            if nova is not None:
                return nova
        return Identity(namespace=self.default_namespace, name=domain.domain_name, node=self.node)

    def _kubevirt(self, domain: DomainInventory) -> Identity | None:
        if KUBEVIRT_UID_KEY not in domain.metadata:
            return None
        namespace, sep, vmi = domain.domain_name.partition("_")
        if sep and namespace and vmi:
            return Identity(namespace=namespace, name=vmi, node=self.node)
        return None

    def _nova(self, domain: DomainInventory) -> Identity | None:
        name = domain.metadata.get(NOVA_NAME_KEY, "")
        project = domain.metadata.get(NOVA_PROJECT_NAME_KEY) or domain.metadata.get(
            NOVA_PROJECT_UUID_KEY, ""
        )
        if not name:
            return None
        return Identity(namespace=project or self.default_namespace, name=name, node=self.node)


def parse_kubevirt_metadata(element_xml: str) -> dict[str, str]:
    """Identity hints from KubeVirt's ``<kubevirt xmlns="http://kubevirt.io">`` element."""
    try:
        # The domain's own metadata, written by the host's management layer, not by the guest.
        root = ET.fromstring(element_xml)  # noqa: S314
    except ET.ParseError:
        return {}
    for child in root:
        if child.tag.rpartition("}")[2] == "uid" and child.text and child.text.strip():
            return {KUBEVIRT_UID_KEY: child.text.strip()}
    return {}


def parse_nova_metadata(element_xml: str) -> dict[str, str]:
    """Identity hints from Nova's ``<nova:instance>`` element: instance name and project."""
    try:
        # The domain's own metadata, written by the host's management layer, not by the guest.
        root = ET.fromstring(element_xml)  # noqa: S314
    except ET.ParseError:
        return {}
    hints: dict[str, str] = {}
    for child in root:
        tag = child.tag.rpartition("}")[2]
        if tag == "name" and child.text and child.text.strip():
            hints[NOVA_NAME_KEY] = child.text.strip()
        elif tag == "owner":
            for owner in child:
                if owner.tag.rpartition("}")[2] != "project":
                    continue
                if owner.text and owner.text.strip():
                    hints[NOVA_PROJECT_NAME_KEY] = owner.text.strip()
                if owner.get("uuid", "").strip():
                    hints[NOVA_PROJECT_UUID_KEY] = owner.get("uuid", "").strip()
    return hints if NOVA_NAME_KEY in hints else {}


@dataclass(frozen=True, slots=True)
class MetadataReader:
    """One metadata element to read from each domain, and how to turn it into hints."""

    namespace_uri: str
    parse: Callable[[str], dict[str, str]]


KUBEVIRT_METADATA = MetadataReader(KUBEVIRT_METADATA_NAMESPACE, parse_kubevirt_metadata)
NOVA_METADATA = tuple(MetadataReader(uri, parse_nova_metadata) for uri in NOVA_METADATA_NAMESPACES)


def metadata_readers_for(mode: IdentityMode) -> tuple[MetadataReader, ...]:
    """The metadata an identity mode needs, in order of precedence (the first hit wins)."""
    readers = {
        IdentityMode.AUTO: (KUBEVIRT_METADATA, *NOVA_METADATA),
        IdentityMode.KUBEVIRT: (KUBEVIRT_METADATA,),
        IdentityMode.OPENSTACK: NOVA_METADATA,
        IdentityMode.LIBVIRT: (),
    }
    return readers[mode]


def default_node() -> str:
    """The ``node`` label when ``--node`` is not given: ``$NODE_NAME`` (Kubernetes' downward API),
    else the host name."""
    return os.environ.get("NODE_NAME") or socket.gethostname()
