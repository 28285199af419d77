"""The source kinds: which one the settings select, and how each is built.

Each kind is one entry of :data:`SOURCES`: its name, whether the settings select it, and how to
build it from them; exactly one entry selects any valid settings. A new kind is its module in
this package and one entry here; nothing else branches on the kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from guestload.identity import metadata_readers_for
from guestload.settings import Settings, SourceKind
from guestload.sources.kubevirt_sockets import (
    MIN_CALL_DEADLINE_SECONDS,
    SocketGlobSource,
)
from guestload.sources.protocol import Source
from guestload.sources.simulated import SimulatedSource


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """One kind of source."""

    name: str
    selected: Callable[[Settings], bool]
    """Whether ``--source`` and the kind's own flags choose this kind."""
    build: Callable[[Settings], Source]


def _simulated(settings: Settings) -> Source:
    return SimulatedSource(simulation=settings.simulation, host_stats=settings.host_stats())


def _libvirt_at(settings: Settings) -> Callable[[str], Source]:
    """A builder of libvirt sources with the settings' identity metadata and host stats."""
    from guestload.sources.libvirt import LibvirtSource  # noqa: PLC0415 - imports libvirt

    readers = metadata_readers_for(settings.identity_mode)
    host_stats = settings.host_stats()
    return lambda uri: LibvirtSource(uri=uri, metadata_readers=readers, host_stats=host_stats)


def _libvirt(settings: Settings) -> Source:
    return _libvirt_at(settings)(settings.libvirt_uri)


def _libvirt_sockets(settings: Settings) -> Source:
    # A listing waits for a socket as long as for a guest agent (at least a second): a daemon
    # slower than that is hung, and the other sockets' VMs must not wait for it.
    return SocketGlobSource(
        socket_glob=settings.socket_glob,
        uri_template=settings.socket_uri_template,
        make_source=_libvirt_at(settings),
        call_deadline_seconds=max(MIN_CALL_DEADLINE_SECONDS, settings.agent_timeout_seconds),
    )


SOURCES: tuple[SourceEntry, ...] = (
    SourceEntry("simulated", lambda s: s.source is SourceKind.SIMULATED, _simulated),
    SourceEntry(
        "libvirt-sockets",
        lambda s: s.source is SourceKind.LIBVIRT and bool(s.socket_glob),
        _libvirt_sockets,
    ),
    SourceEntry(
        "libvirt", lambda s: s.source is SourceKind.LIBVIRT and not s.socket_glob, _libvirt
    ),
)
"""Every kind of source: simulated VMs, KubeVirt node mode (one libvirt daemon per socket that
``--libvirt.socket-glob`` matches) and one libvirt URI."""


def selected_entry(settings: Settings) -> SourceEntry:
    """The one kind ``settings`` select."""
    (entry,) = (entry for entry in SOURCES if entry.selected(settings))
    return entry


def make_source(settings: Settings) -> Source:
    """The source the settings select, not connected yet."""
    return selected_entry(settings).build(settings)
