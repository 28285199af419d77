"""What to check when a libvirt daemon cannot be reached: the advice ``guestload probe`` prints.

Separate from :mod:`guestload.sources.libvirt` because it needs no ``libvirt`` import: it reads
only the URI, the error's text and the socket's file status.
"""

from __future__ import annotations

import grp
import os
import re
import stat
import urllib.parse

_SOCKET_IN_ERROR = re.compile(r"socket to '([^']+)'")


def _socket_path(uri: str, error: str) -> str | None:
    """The unix socket behind ``uri``: its ``socket=`` parameter, else the one libvirt named."""
    query = urllib.parse.urlsplit(uri).query
    given = urllib.parse.parse_qs(query).get("socket")
    if given:
        return given[0]
    named = _SOCKET_IN_ERROR.search(error)
    return named.group(1) if named else None


def _socket_facts(path: str) -> str:
    """``path`` with its group and mode when it exists, else that it is missing."""
    try:
        info = os.stat(path)
    except OSError as error:
        return f"{path} ({error.strerror.lower() if error.strerror else 'not found'})"
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return f"{path} (group {group}, mode {stat.S_IMODE(info.st_mode):04o})"


def unreachable_advice(uri: str, error: str) -> str:
    """What to check when libvirt at ``uri`` could not be reached with ``error``."""
    lines = [
        f"libvirt at {uri} is unreachable; check that:",
        "  - the libvirt daemon runs (libvirtd, or virtqemud where libvirt runs one daemon "
        "per driver)",
    ]
    socket_path = _socket_path(uri, error)
    if socket_path is not None:
        lines.append(f"  - its socket exists: {_socket_facts(socket_path)}")
    lines += [
        "  - this user may open the socket read-write: root, or a member of its group "
        "(usually libvirt; log in again after joining it)",
        "  - --libvirt.uri names the right daemon",
    ]
    return "\n".join(lines) + "\n"
