"""The systemd unit, its environment file and its sysusers file, checked by systemd's own tools.

systemd is not PID 1 here: ``systemd-analyze verify`` and ``security`` run offline against a
throw-away root directory that holds the unit, the executable it names and the few targets
every service depends on.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from guestload.cli.flags import build_parser, settings_from_args

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNIT = SYSTEMD_DIR / "guestload.service"
ENVIRONMENT = SYSTEMD_DIR / "guestload.env"
SYSUSERS = SYSTEMD_DIR / "guestload.sysusers"
EXECUTABLE = "/opt/guestload/bin/guestload"
#: Highest exposure allowed, in tenths of systemd-analyze security's 0 (locked down) to 10
#: (unprotected) scale; the unit scores 1.5.
MAX_EXPOSURE_TENTHS = 20


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/install-system-deps (package systemd)")
    return path


def _offline_root(root: Path, unit_text: str) -> Path:
    """A root with the unit, a stand-in for its executable and the default dependencies."""
    units = root / "usr" / "lib" / "systemd" / "system"
    units.mkdir(parents=True)
    for target in ("sysinit", "basic", "shutdown", "multi-user", "network-online"):
        (units / f"{target}.target").write_text(f"[Unit]\nDescription={target}\n")
    executable = root / EXECUTABLE.lstrip("/")
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    unit = root / "etc" / "systemd" / "system" / "guestload.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(unit_text)
    return unit


def _verify(root: Path, unit_text: str) -> list[str]:
    """Every complaint ``systemd-analyze verify`` has about the unit (empty: clean)."""
    unit = _offline_root(root, unit_text)
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", "--man=no", f"--root={root}", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = (result.stdout + result.stderr).splitlines()
    if result.returncode != 0 and not complaints:
        complaints = [f"exit code {result.returncode}"]
    return complaints


def test_the_unit_verifies_without_a_single_warning(tmp_path: Path) -> None:
    assert _verify(tmp_path, UNIT.read_text()) == []


@pytest.mark.parametrize(
    ("original", "broken"),
    [
        ("ProtectHome=yes", "ProtectHoem=yes"),
        ("SystemCallFilter=@system-service", "SystemCallFilter=@no-such-set"),
        (f"ExecStart={EXECUTABLE}", "ExecStart=/no/such/guestload"),
        ("Type=simple", "Type=bogus"),
    ],
)
def test_verify_catches_a_broken_unit(tmp_path: Path, original: str, broken: str) -> None:
    text = UNIT.read_text()
    assert original in text
    assert _verify(tmp_path, text.replace(original, broken)) != []


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    unit = _offline_root(tmp_path, UNIT.read_text())
    command = [_tool("systemd-analyze"), "security", "--offline=yes", "--man=no"]
    result = subprocess.run(
        [*command, f"--root={tmp_path}", f"--threshold={MAX_EXPOSURE_TENTHS}", unit.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    lines = {line.split("=", 1)[0]: line for line in UNIT.read_text().splitlines() if "=" in line}
    for directive in (
        "User",
        "SupplementaryGroups",
        "EnvironmentFile",
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "RestrictAddressFamilies",
        "CapabilityBoundingSet",
        "SystemCallFilter",
    ):
        assert directive in lines, directive
    assert lines["SupplementaryGroups"] == "SupplementaryGroups=libvirt"
    assert lines["ProtectSystem"] == "ProtectSystem=strict"
    assert lines["CapabilityBoundingSet"] == "CapabilityBoundingSet="
    assert lines["RestrictAddressFamilies"] == "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"


def test_the_environment_file_holds_flags_the_exporter_accepts() -> None:
    variables = {}
    for line in ENVIRONMENT.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            variables[name] = shlex.split(value)[0]
    assert set(variables) == {"GUESTLOAD_ARGS"}
    assert "$GUESTLOAD_ARGS" in UNIT.read_text()
    # systemd splits an unquoted $VARIABLE on white space, as shlex does here.
    args = build_parser().parse_args(["serve", *variables["GUESTLOAD_ARGS"].split()])
    settings = settings_from_args(args)
    assert settings.libvirt_uri == "qemu:///system"
    assert settings.poll_interval_seconds == 30.0


def test_sysusers_creates_the_user_in_the_libvirt_group(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "group").write_text("libvirt:x:120:\n")
    for name in ("passwd", "shadow", "gshadow"):
        (etc / name).write_text("")
    subprocess.run(
        [_tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    passwd = (etc / "passwd").read_text()
    assert passwd.startswith("guestload:x:"), passwd
    assert passwd.rstrip().endswith(":/usr/sbin/nologin"), passwd
    groups = {row.split(":")[0]: row.split(":")[3] for row in (etc / "group").read_text().split()}
    assert groups["libvirt"] == "guestload"
    assert "guestload" in groups
