"""The real ``guestload`` binary against libvirt's test driver, compared with a golden file.

``guestload serve`` runs as a child process, straight on ``test:///default`` and through a
private test-driver daemon's socket; its first poll's ``/metrics`` must pass ``promtool check
metrics`` and, once the values that legitimately vary are normalised, equal
``golden/serve-test-driver.prom``. ``pytest --update-golden`` rewrites that file from the
current output (review the diff before committing it).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestload_lab.libvirtd import TestDriverLibvirtd
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Exporter
from guestload_lab.waiting import wait_until
from tests.exposition import metric_value, sample_lines

pytestmark = pytest.mark.daemon

GOLDEN = Path(__file__).parent / "golden" / "serve-test-driver.prom"
NODE = "golden-node"
DIRECT_URI = "test:///default"
TEST_DOMAIN_STATE = (
    f'guestload_agent_state{{name="test",namespace="libvirt",node="{NODE}",query="load",'
    'state="unsupported"}'
)

VARYING_VALUES = frozenset(
    {
        "guestload_poll_duration_seconds",
        "guestload_last_poll_success_timestamp_seconds",
        "guestload_render_duration_seconds",
    }
)
"""Series whose value is a time: replaced by ``<varies>``."""
VARYING_LABELS = frozenset(
    {"version", "python_version", "libvirt_library_version", "libvirt_daemon_version", "uri"}
)
"""``guestload_build_info`` labels that depend on the host or the run: replaced by ``<varies>``."""
PROCESS_FAMILIES = ("process_", "python_info")
"""The exporter process's own families (CPU, memory, file descriptors, interpreter): dropped."""

_SAMPLE = re.compile(r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{[^}]*\})? (?P<value>\S+)")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


def normalise(body: str) -> str:
    """``body`` with process families dropped and varying values and labels replaced."""
    lines = []
    for line in body.splitlines():
        if line.startswith("#"):
            family = line.split(" ", 3)[2]
            if not family.startswith(PROCESS_FAMILIES):
                lines.append(line)
            continue
        sample = _SAMPLE.fullmatch(line)
        assert sample is not None, f"not a sample line: {line!r}"
        name, labels, value = sample["name"], sample["labels"] or "", sample["value"]
        if name.startswith(PROCESS_FAMILIES):
            continue
        if name in VARYING_VALUES:
            value = "<varies>"
        if name == "guestload_build_info":
            labels = _LABEL.sub(
                lambda m: f'{m["key"]}="<varies>"' if m["key"] in VARYING_LABELS else m[0], labels
            )
        lines.append(f"{name}{labels} {value}")
    return "\n".join(lines) + "\n"


def guestload(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real command line to its end."""
    return subprocess.run(
        [sys.executable, "-m", "guestload", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_libvirt_up(exporter: Exporter, up: float, *, timeout: float, after: str) -> str:
    """The first scrape whose ``guestload_libvirt_up`` is ``up``."""

    def scrape_if_up() -> str | None:
        body = exporter.scrape_text()
        return body if metric_value(body, "guestload_libvirt_up") == up else None

    return wait_until(
        scrape_if_up,
        timeout=timeout,
        interval=0.2,
        what=f"guestload_libvirt_up {up:g} after {after}",
        detail=exporter.log,
    )


@pytest.fixture
def registry() -> Iterator[ProcessRegistry]:
    with ProcessRegistry() as processes:
        yield processes


def serve(uri: str, *, registry: ProcessRegistry, workdir: Path, interval: str) -> Exporter:
    """A listening ``guestload serve`` on ``uri`` whose first poll succeeded."""
    exporter = Exporter(
        libvirt_uri=uri,
        node=NODE,
        workdir=workdir,
        registry=registry,
        interval=interval,
        agent_timeout="500ms",
    )
    exporter.start()
    exporter.wait_ready(timeout=15)
    return exporter


@pytest.mark.parametrize("through_daemon", [False, True], ids=["direct", "private-daemon"])
def test_first_poll_matches_the_golden_file(
    through_daemon: bool,
    registry: ProcessRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    uri = DIRECT_URI
    if through_daemon:
        uri = request.getfixturevalue("test_driver_daemon").uri
    # One poll only: the next is two minutes away, so every counter is that poll's.
    exporter = serve(uri, registry=registry, workdir=tmp_path, interval="120s")
    status, body = exporter.get("/metrics")
    assert status == 200, exporter.log()

    promtool = subprocess.run(
        ["promtool", "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (promtool.returncode, promtool.stdout + promtool.stderr) == (0, "")
    assert metric_value(body, "guestload_libvirt_up") == 1.0
    assert metric_value(body, TEST_DOMAIN_STATE) == 1.0
    assert sample_lines(body, "kubevirt_vmi_guest_load_") == [], "the test driver has no agent"
    (build_info,) = sample_lines(body, "guestload_build_info")
    assert f'uri="{uri}"' in build_info

    normalised = normalise(body)
    if request.config.getoption("--update-golden"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(normalised)
    assert normalised == GOLDEN.read_text(), "rewrite with pytest --update-golden if intended"


def test_probe_prints_the_table() -> None:
    result = guestload("probe", "--libvirt.uri", DIRECT_URI, "--node", NODE)
    assert result.returncode == 0, result.stderr
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["NAMESPACE", "NAME", "NODE", "DOMAIN", "VCPUS", "LOAD1", "LOAD5", "LOAD15", "AGENT"],
        ["libvirt", "test", NODE, "test", "-", "-", "-", "-", "unsupported"],
    ]


def test_a_zero_interval_stops_serve_with_exit_code_2_naming_the_flag() -> None:
    result = guestload("serve", "--libvirt.uri", DIRECT_URI, "--collector.interval", "0")
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("guestload: error: --collector.interval"), line


def test_a_killed_daemon_drops_every_vm_series_until_it_is_back(
    test_driver_daemon: TestDriverLibvirtd, registry: ProcessRegistry, tmp_path: Path
) -> None:
    exporter = serve(test_driver_daemon.uri, registry=registry, workdir=tmp_path, interval="1s")
    assert metric_value(exporter.scrape_text(), TEST_DOMAIN_STATE) == 1.0

    test_driver_daemon.kill()
    down = wait_libvirt_up(exporter, 0, timeout=15, after="libvirtd was killed")
    assert sample_lines(down, "guestload_agent_state") == []
    assert sample_lines(down, "guestload_domain_info") == []
    assert sample_lines(down, "kubevirt_vmi_") == []
    assert exporter.get("/readyz")[0] == 503
    assert exporter.process.poll() is None, exporter.log()

    test_driver_daemon.start()
    up = wait_libvirt_up(exporter, 1, timeout=20, after="libvirtd came back")
    assert metric_value(up, TEST_DOMAIN_STATE) == 1.0
    assert "Traceback" not in exporter.log()
