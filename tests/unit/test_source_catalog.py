"""The source kinds: exactly one is selected by any settings, and each builds its own source."""

from __future__ import annotations

import pytest

from guestload.cli.flags import build_parser, settings_from_args
from guestload.settings import Settings
from guestload.sources.catalog import SOURCES, make_source, selected_entry
from guestload.sources.kubevirt_sockets import SocketGlobSource
from guestload.sources.libvirt import LibvirtSource
from guestload.sources.simulated import SimulatedSource


def settings(*flags: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["probe", "--node", "n", *flags]))


@pytest.mark.parametrize(
    ("flags", "kind", "built"),
    [
        ((), "libvirt", LibvirtSource),
        (("--libvirt.uri", "qemu+ssh://h/system"), "libvirt", LibvirtSource),
        (("--libvirt.socket-glob", "/pods/*/sock"), "libvirt-sockets", SocketGlobSource),
        (("--source", "simulated"), "simulated", SimulatedSource),
        (
            ("--source", "simulated", "--libvirt.socket-glob", "/p/*/s"),
            "simulated",
            SimulatedSource,
        ),
    ],
)
def test_the_flags_select_one_kind_which_builds_its_source(
    flags: tuple[str, ...], kind: str, built: type
) -> None:
    chosen = settings(*flags)
    assert [entry.name for entry in SOURCES if entry.selected(chosen)] == [kind]
    assert selected_entry(chosen).name == kind
    assert isinstance(make_source(chosen), built)


def test_node_mode_reports_each_connection_and_one_uri_reports_none() -> None:
    node = make_source(settings("--libvirt.socket-glob", "/pods/*/sock"))
    assert node.connection_health(lambda _inventory: pytest.fail("no socket yet")) == ()
    assert node.facts().uri == "qemu+unix:///session?socket=/pods/*/sock"
    single = make_source(settings("--libvirt.uri", "test:///default"))
    assert single.connection_health(lambda _inventory: pytest.fail("no socket")) is None
    assert single.facts().uri == "test:///default"
    assert single.unreachable_advice("refused").startswith("libvirt at test:///default ")
