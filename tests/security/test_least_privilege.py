"""What libvirt access guestload needs, measured on a real daemon, and running as nobody.

libvirt checks read-only connections in its public API, before any driver runs: so libvirt's
test driver behind a private daemon shows the same gate as the QEMU driver (the QEMU driver
with a real VM was measured the same way: error 29 on a read-only connection).
"""

from __future__ import annotations

import pwd

import libvirt
import pytest

from guestload_lab.services import Exporter
from tests.exposition import metric_value
from tests.security.exporters import DaemonFactory, Exporters

UNPRIVILEGED_USER = "nobody"
UNPRIVILEGED_GROUP = "nogroup"
TEST_DOMAIN_STATE = (
    'guestload_agent_state{name="test",namespace="libvirt",node="test-node",query="load",'
    'state="unsupported"}'
)

pytestmark = pytest.mark.daemon


def _quiet(_context: object, _error: object) -> None:
    """Keep libvirt's default error printing off the test output."""


def _error_code(call: object) -> int | None:
    try:
        call()  # type: ignore[operator]
    except libvirt.libvirtError as error:
        return int(error.get_error_code())
    return None


def test_guest_info_needs_a_read_write_connection(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon(ro_perms="0777")
    daemon.start()
    libvirt.registerErrorHandler(_quiet, None)
    read_only = libvirt.openReadOnly(daemon.ro_uri)
    read_write = libvirt.open(daemon.uri)
    try:
        ro_domain = read_only.lookupByName("test")
        denied = libvirt.VIR_ERR_OPERATION_DENIED
        assert (
            _error_code(lambda: ro_domain.guestInfo(libvirt.VIR_DOMAIN_GUEST_INFO_LOAD)) == denied
        )
        assert _error_code(lambda: ro_domain.agentSetResponseTimeout(5)) == denied
        # The bulk stats call works read-only.
        stats = read_only.getAllDomainStats(
            libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_VCPU,
            libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING,
        )
        assert [domain.name() for domain, _ in stats] == ["test"]
        # Read-write passes the gate and reaches the driver (the test driver has no agent).
        rw_domain = read_write.lookupByName("test")
        code = _error_code(lambda: rw_domain.guestInfo(libvirt.VIR_DOMAIN_GUEST_INFO_LOAD))
        assert code not in (denied, None)
        assert code == libvirt.VIR_ERR_NO_SUPPORT
    finally:
        read_only.close()
        read_write.close()
        libvirt.registerErrorHandler(None, None)


def test_serves_as_nobody_with_only_the_read_write_socket(
    make_daemon: DaemonFactory, exporters: Exporters
) -> None:
    """Socket group nogroup, mode 0770: nobody gets in through its group, nothing more."""
    account = pwd.getpwnam(UNPRIVILEGED_USER)
    daemon = make_daemon(rw_perms="0770", ro_perms="0700", group=UNPRIVILEGED_GROUP)
    daemon.start()
    stat = daemon.socket_path.stat()
    assert (stat.st_mode & 0o777, stat.st_gid) == (0o770, account.pw_gid)
    exporter = _serve_as_nobody(exporters, daemon.uri)
    exporter.wait_ready(timeout=15)
    uid = _process_uid(exporter.process.pid)
    assert uid == account.pw_uid, "the exporter process runs as nobody"
    _, body = exporter.get("/metrics")
    assert metric_value(body, "guestload_libvirt_up") == 1.0
    assert metric_value(body, TEST_DOMAIN_STATE) == 1.0
    assert "running as root" not in exporter.log()


def test_without_socket_access_nobody_gets_nothing(
    make_daemon: DaemonFactory, exporters: Exporters
) -> None:
    """The same user without the socket's group: refused, reported, no crash."""
    daemon = make_daemon(rw_perms="0700", ro_perms="0700")
    daemon.start()
    exporter = _serve_as_nobody(exporters, daemon.uri)
    exporter.wait_for_log("hypervisor unavailable", timeout=10)
    assert "Permission denied" in exporter.log()
    assert exporter.get("/readyz")[0] == 503
    _, body = exporter.get("/metrics")
    assert metric_value(body, "guestload_libvirt_up") == 0.0
    assert exporter.process.poll() is None


def _serve_as_nobody(exporters: Exporters, uri: str) -> Exporter:
    home = exporters.folder / "home"
    home.mkdir()
    home.chmod(0o777)
    return exporters.start(
        "--libvirt.uri",
        uri,
        user=UNPRIVILEGED_USER,
        group=UNPRIVILEGED_GROUP,
        env={"HOME": str(home)},
    )


def _process_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Uid:"):
                return int(line.split()[2])  # effective uid
    raise AssertionError(f"no Uid line for {pid}")
