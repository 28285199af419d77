"""The guest's operating system: ``guest-get-osinfo``, or libvirt's typed guest info.

QEMU's agent has the command since 2.10. On Linux it answers the kernel's ``uname`` (keys
``kernel-release``, ``kernel-version``, ``machine``) and the fields of ``/etc/os-release`` (else
``/usr/lib/os-release``): ``id``, ``name``, ``pretty-name``, ``version``, ``version-id``,
``variant``, ``variant-id``, each only where the file has it. A guest without os-release (a
minimal initramfs) answers the kernel fields alone. Windows' agent answers every key: ``id`` is
``mswindows``, ``name`` ``Microsoft Windows``, ``pretty-name`` the product name (``Windows
Server 2022 Datacenter``), ``version-id`` e.g. ``2022`` (``N/A`` for a build it does not know),
``variant`` and ``variant-id`` ``server`` or ``client``, ``kernel-release`` the build number,
``kernel-version`` e.g. ``10.0``. libvirt >= 5.7 reads the same answer with
``virDomainGetGuestInfo(VIR_DOMAIN_GUEST_INFO_OS)``, each key prefixed ``os.``; older libraries
fall back to the agent's own command.

Asked once per agent run (:attr:`~guestload.queries.query.Refresh.ONCE_PER_RUN`): an ``ok``
answer is kept and exported without asking again until the domain restarts (a new domain id, a
started or stopped event) or its agent disconnects or connects; any other answer is asked again
at the next poll. It is asked after the load and the CPU times, so it never delays them.

Exported as ``guestload_guest_os_info`` (always 1), named after node_exporter's
``node_os_info``; its ``name`` label is left out, as ``name`` is the VM's own label (``id`` and
``pretty_name`` say the same). The name stays outside ``kubevirt_vmi_*``, which KubeVirt may
claim: KubeVirt's virt-handler exports ``kubevirt_vmi_info`` with ``guest_os_*`` labels read
from the same command.

Everything the guest sends is untrusted. A value that is not a string is dropped; whitespace
runs become one space and control, format and surrogate characters are removed; a text value
(``pretty_name``, ``kernel_release``, ``machine``) is cut to :data:`MAX_LABEL_CHARS`. The
identifiers (``id``, ``version_id``, ``variant_id``) follow os-release's rules for them: lower
case, only ``a-z``, ``0-9``, ``.``, ``_`` and ``-``; one that breaks them after lower-casing, or
is longer than :data:`MAX_LABEL_CHARS`, is left empty rather than cut (a cut identifier would
name another system). An answer without any usable value is ``invalid``; one without any OS key
at all (libvirt's empty guest info when an agent does not answer in time) is ``no_data``.

Registered as :data:`REGISTRATION`: ``--collector.guest-os`` (on by default) asks it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from guestload.metricspec import VM_LABELS, MetricSpec, MetricType, VmSample
from guestload.model import AgentState, QueryReading
from guestload.queries.agent import invalid, reply_return
from guestload.queries.query import GuestQuery, Refresh, TypedInfo
from guestload.queries.registry import registration
from guestload.registration import CollectorFlag, SimulatedGuest

MAX_LABEL_CHARS = 128
"""Longest label value exported; a real one (a pretty name, a kernel release) is under 60."""

_READ_CHARS = 4 * MAX_LABEL_CHARS
"""Characters of a value read at most: enough for any label after cleaning, bounded work."""

MAX_REPLY_CHARS = 64 * 1024
"""Longest passthrough reply parsed; a real guest-get-osinfo reply is under 1,000 characters."""

AGENT_KEYS = (
    "id",
    "name",
    "pretty-name",
    "version",
    "version-id",
    "variant",
    "variant-id",
    "kernel-release",
    "kernel-version",
    "machine",
)
"""The keys of the agent's ``guest-get-osinfo`` reply; libvirt's guest info prefixes ``os.``."""

GUEST_INFO_PREFIX = "os."
"""The prefix of ``virDomainGetGuestInfo(VIR_DOMAIN_GUEST_INFO_OS)``'s keys."""

_OS_RELEASE_ID = re.compile(r"[a-z0-9._-]+")
_REMOVED = frozenset({"Cc", "Cf", "Cs"})
"""Unicode control, format (e.g. bidirectional overrides) and surrogate characters."""

OS_INFO = MetricSpec(
    "guestload_guest_os_info",
    MetricType.GAUGE,
    "The guest's operating system as its QEMU guest agent reports it (guest-get-osinfo: "
    "os-release fields and the kernel's uname), read once per agent run. Always 1. Labels as "
    "node_exporter's node_os_info, without name; a guest without os-release has only "
    "kernel_release and machine. KubeVirt's virt-handler exports the same answer as "
    "guest_os_* labels of kubevirt_vmi_info.",
    (*VM_LABELS, "id", "version_id", "pretty_name", "variant_id", "kernel_release", "machine"),
)


@dataclass(frozen=True, slots=True)
class GuestOs:
    """A guest's operating system, cleaned for labels; empty where the agent gave nothing usable."""

    id: str = ""
    """os-release's ``ID`` (``debian``), ``mswindows`` on Windows."""
    version_id: str = ""
    pretty_name: str = ""
    variant_id: str = ""
    kernel_release: str = ""
    machine: str = ""


class OsInfoQuery(GuestQuery):
    """The guest's operating system, asked once per agent run."""

    name = "osinfo"
    agent_command = "guest-get-osinfo"
    typed_info = TypedInfo.OS
    refresh = Refresh.ONCE_PER_RUN

    @property
    def families(self) -> tuple[MetricSpec, ...]:
        return (OS_INFO,)

    def parse_typed_info(self, info: object) -> QueryReading:
        return parse_guest_info_os(info)

    def parse_agent_reply(self, reply: object) -> QueryReading:
        return parse_osinfo_reply(reply)

    def samples(self, value: object) -> Iterator[VmSample]:
        if isinstance(value, GuestOs):
            labels = (
                value.id,
                value.version_id,
                value.pretty_name,
                value.variant_id,
                value.kernel_release,
                value.machine,
            )
            yield OS_INFO, labels, 1.0


OSINFO = OsInfoQuery()


@dataclass(frozen=True, slots=True, kw_only=True)
class OsInfoOptions:
    """The OS query's options (``--collector.guest-os``)."""

    enabled: bool = True
    """Ask guest agents for their operating system once per agent run and export it."""


def simulated_guest_info(guest: SimulatedGuest) -> dict[str, str]:
    """What libvirt's guest info of a healthy agent holds: the guest's non-empty OS fields."""
    system = guest.os
    values = {
        "id": system.id,
        "name": system.name,
        "pretty-name": system.pretty_name,
        "version": system.version,
        "version-id": system.version_id,
        "variant": system.variant,
        "variant-id": system.variant_id,
        "kernel-release": system.kernel_release,
        "kernel-version": system.kernel_version,
        "machine": system.machine,
    }
    return {GUEST_INFO_PREFIX + key: value for key, value in values.items() if value}


REGISTRATION = registration(
    name=OSINFO.name,
    defaults=OsInfoOptions(),
    flags=(
        CollectorFlag(
            "--collector.guest-os",
            "enabled",
            "ask guest agents for their operating system (guest-get-osinfo) once per agent run "
            "and export guestload_guest_os_info (default: %(default)s)",
        ),
    ),
    build=lambda _options: OSINFO,
    families=OSINFO.families,
    agent_since=(2, 10),
    simulated_answer=simulated_guest_info,
)


def parse_guest_info_os(info: object) -> QueryReading:
    """Read the OS from a ``guestInfo(VIR_DOMAIN_GUEST_INFO_OS)`` result (keys ``os.*``)."""
    if not isinstance(info, Mapping):
        return invalid(f"guest info is a {type(info).__name__}, not a mapping")
    return _reading_from_values(info, GUEST_INFO_PREFIX)


def parse_osinfo_reply(reply: object) -> QueryReading:
    """Read the OS from the agent's raw ``guest-get-osinfo`` reply, e.g.
    ``{"return": {"id": "debian", "version-id": "12", "kernel-release": "6.1.0-28-amd64"}}``.

    A ``CommandNotFound`` error is unsupported, another agent error is an error, and a reply
    without a ``return`` object is invalid.
    """
    answer = reply_return(reply, max_chars=MAX_REPLY_CHARS)
    if isinstance(answer, QueryReading):
        return answer
    if not isinstance(answer, dict):
        return invalid("reply has no 'return' object")
    return _reading_from_values(answer, "")


def _reading_from_values(values: Mapping[str, object], prefix: str) -> QueryReading:
    if not any(prefix + key in values for key in AGENT_KEYS):
        return QueryReading(state=AgentState.NO_DATA, detail="agent answered without OS fields")
    system = GuestOs(
        id=os_release_id(values.get(prefix + "id")),
        version_id=os_release_id(values.get(prefix + "version-id")),
        pretty_name=label_text(values.get(prefix + "pretty-name")),
        variant_id=os_release_id(values.get(prefix + "variant-id")),
        kernel_release=label_text(values.get(prefix + "kernel-release")),
        machine=label_text(values.get(prefix + "machine")),
    )
    if system == GuestOs():
        return invalid("no usable OS field: every value is missing, not text, or malformed")
    return QueryReading(state=AgentState.OK, value=system)


def label_text(value: object) -> str:
    """``value`` as a label value: text only, whitespace runs as one space, control, format and
    surrogate characters removed, at most :data:`MAX_LABEL_CHARS` characters; else empty."""
    if not isinstance(value, str):
        return ""
    return _cleaned(value)[:MAX_LABEL_CHARS].rstrip()


def os_release_id(value: object) -> str:
    """``value`` as an os-release identifier (``ID``, ``VERSION_ID``, ``VARIANT_ID``): lower
    case ``[a-z0-9._-]``, at most :data:`MAX_LABEL_CHARS` characters; else empty."""
    if not isinstance(value, str) or len(value) > _READ_CHARS:
        return ""
    text = _cleaned(value).lower()
    if len(text) > MAX_LABEL_CHARS or not _OS_RELEASE_ID.fullmatch(text):
        return ""
    return text


def _cleaned(value: str) -> str:
    """The first :data:`_READ_CHARS` characters of ``value``: whitespace runs as one space,
    without control, format and surrogate characters, trimmed."""
    spaced = " ".join(value[:_READ_CHARS].split())
    kept = "".join(char for char in spaced if unicodedata.category(char) not in _REMOVED)
    return " ".join(kept.split())
