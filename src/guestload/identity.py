"""Domain -> the (namespace, name, node) labels a VM is known by."""

from __future__ import annotations

from dataclasses import dataclass

from guestload.model import DomainInventory, Identity

#: Metadata key the libvirt source fills from ``<kubevirt xmlns="http://kubevirt.io"><uid>``.
KUBEVIRT_UID_KEY = "kubevirt.uid"


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityResolver:
    """Names VMs the way the platform that created them does.

    KubeVirt names a VMI's domain ``<namespace>_<vmi>`` and marks it with KubeVirt metadata;
    Kubernetes namespaces cannot contain ``_``, so the first ``_`` splits the two. Any other
    domain keeps its own name and gets ``default_namespace``.
    """

    node: str
    default_namespace: str

    def resolve(self, domain: DomainInventory) -> Identity:
        if KUBEVIRT_UID_KEY in domain.metadata:
            namespace, sep, vmi = domain.domain_name.partition("_")
            if sep and namespace and vmi:
                return Identity(namespace=namespace, name=vmi, node=self.node)
        return Identity(namespace=self.default_namespace, name=domain.domain_name, node=self.node)
