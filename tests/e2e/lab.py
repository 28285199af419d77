"""The end-to-end lab: the VMs the session boots, and what the tests get to reach them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from guestload_lab.image import GuestImage
from guestload_lab.libvirtd import PrivateLibvirtd
from guestload_lab.vm import AgentKind, Hypervisor, LabVm, VmSpec

NAMESPACE = "lab"
NODE = "lab-node"
PLAIN_NAMESPACE = "libvirt"
"""The exporter's namespace for domains KubeVirt did not create."""

STRESS_WORKERS = 4
"""The basic overload: ``stress-ng --cpu 4`` in a 1-vCPU guest, four runnable tasks per vCPU."""
HEAVY_WORKERS = 32
"""Measured: passes a queue of 20 at ~65 s in a 1-vCPU TCG guest (16 levels off near 15)."""


def _kubevirt(vmi: str, **settings: object) -> VmSpec:
    return VmSpec.kubevirt(NAMESPACE, vmi, str(uuid.uuid4()), **settings)


VM_SPECS = {
    "idle": _kubevirt("idle", vcpus=2),
    "stress": _kubevirt("stress"),
    "heavy": _kubevirt("heavy"),
    "frozen": _kubevirt("frozen"),
    "killed": _kubevirt("killed"),
    "old_agent": _kubevirt("old-agent", agent=AgentKind.OLD),
    "silent": _kubevirt("silent", agent=AgentKind.NONE),
    "no_channel": VmSpec(name="plain-no-channel", channel=False),
}
"""Every VM booted with the session: key -> spec. ``no_channel`` is a plain libvirt domain."""

WITH_AGENT = ("idle", "stress", "heavy", "frozen", "killed", "old_agent")
STRESSED = ("stress", "heavy")
"""Only these boot the image with stress-ng; the others boot the slim image (faster)."""

LATE_SPEC = _kubevirt("late")
"""A VM booted while the exporter runs, then destroyed."""


@dataclass
class Lab:
    """The session's daemon, image and VMs."""

    directory: Path
    daemon: PrivateLibvirtd
    hypervisor: Hypervisor
    image: GuestImage
    slim_image: GuestImage
    vms: dict[str, LabVm]
    timings: dict[str, float]
    stress_started: dict[str, float] = field(default_factory=dict)
    """VM key -> monotonic time at which its stress-ng was started."""
    load_before_stress: dict[str, float] = field(default_factory=dict)
