"""KubeVirt node mode on a real unix socket whose path is longer than an address can hold."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from guestload.sources.kubevirt_sockets import SocketGlobSource
from guestload.sources.protocol import Source
from tests.unit.fakes import FakeSource


def test_a_socket_path_too_long_for_an_address_is_reached_through_its_directory(
    tmp_path: Path,
) -> None:
    directory = tmp_path / ("d" * 60) / "volumes" / "kubernetes.io~empty-dir" / "libvirt-runtime"
    directory.mkdir(parents=True)
    long_path = str(directory / "virtqemud-sock")
    assert len(long_path) > 107
    with socket.socket(socket.AF_UNIX) as server:
        cwd = os.getcwd()
        os.chdir(directory)  # bind by a short relative name; the kernel takes no long address
        try:
            server.bind("virtqemud-sock")
        finally:
            os.chdir(cwd)
        server.listen()
        made: list[str] = []

        def make(uri: str) -> Source:
            made.append(uri)
            return FakeSource()

        source = SocketGlobSource(
            socket_glob=long_path,
            uri_template="x+unix:///default?socket={socket}",
            make_source=make,
            rescan_interval_seconds=0,
        )
        source.connect()
        (uri,) = made
        short_path = uri.partition("socket=")[2]
        assert short_path.startswith("/proc/self/fd/")
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(short_path)
        source.close()
        fd = short_path.split("/")[4]
        assert not Path(f"/proc/self/fd/{fd}").exists() or os.readlink(
            f"/proc/self/fd/{fd}"
        ) != str(directory), "the directory is released on close"
