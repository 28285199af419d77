"""Domain -> the (namespace, name, node) labels a VM is known by."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from guestload.model import DomainInventory, Identity

#: Metadata key the libvirt source fills from ``<kubevirt xmlns="http://kubevirt.io"><uid>``.
KUBEVIRT_UID_KEY = "kubevirt.uid"
#: Metadata keys the libvirt source fills from Nova's ``<nova:instance>`` element.
NOVA_NAME_KEY = "nova.name"
NOVA_PROJECT_NAME_KEY = "nova.project.name"
NOVA_PROJECT_UUID_KEY = "nova.project.uuid"


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
