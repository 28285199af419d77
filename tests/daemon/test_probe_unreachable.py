"""``guestload probe`` when libvirt cannot be reached: the error and what to check, exit 1.

No table header and no "(no running domains)": that reads as "connected, no VMs".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from guestload_lab.libvirtd import TestDriverLibvirtd

pytestmark = pytest.mark.daemon


def probe(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guestload", "probe", "--libvirt.uri", uri, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("output", ["table", "json"])
def test_a_missing_socket_prints_the_error_the_uri_and_what_to_check(
    output: str, tmp_path: Path
) -> None:
    socket_path = tmp_path / "libvirt-sock"
    uri = f"qemu+unix:///system?socket={socket_path}"
    result = probe(uri, "--output", output)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"guestload: cannot connect to libvirt uri={uri}: "), lines
    assert f"'{socket_path}'" in lines[0], "libvirt's own reason names the socket"
    assert lines[1:] == [
        f"libvirt at {uri} is unreachable; check that:",
        "  - the libvirt daemon runs (libvirtd, or virtqemud where libvirt runs one daemon "
        "per driver)",
        f"  - its socket exists: {socket_path} (no such file or directory)",
        "  - this user may open the socket read-write: root, or a member of its group "
        "(usually libvirt; log in again after joining it)",
        "  - --libvirt.uri names the right daemon",
    ]


def test_a_daemon_that_died_leaves_its_socket_named_with_group_and_mode(
    test_driver_daemon: TestDriverLibvirtd,
) -> None:
    assert probe(test_driver_daemon.uri).returncode == 0
    test_driver_daemon.kill()  # the socket file stays behind, nobody listens

    result = probe(test_driver_daemon.uri)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Connection refused" in result.stderr.splitlines()[0]
    assert f"  - its socket exists: {test_driver_daemon.socket_path} (group " in result.stderr
    assert "(no running domains)" not in result.stderr + result.stdout
