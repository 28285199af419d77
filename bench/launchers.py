"""KubeVirt node mode at full density: N launcher sockets against one connection to N VMs.

A KubeVirt node runs up to 110 pods (the kubelet's default), each VM with its own libvirt
daemon in its virt-launcher pod. This starts ``--launchers`` (110) fake launcher pods
(:class:`guestload_lab.launchers.LauncherPod`): each a private libvirtd serving only libvirt's
test driver, with one KubeVirt-named domain, its socket moved where the kubelet puts a
launcher's (``<kubelet>/pods/<uid>/volumes/kubernetes.io~empty-dir/libvirt-runtime/
virtqemud-sock``, a path too long for a unix socket address). The test driver is the cheapest
faithful stand-in: each daemon is a real libvirtd speaking the same remote protocol over its
own unix socket (connect, keepalives, event registrations, one bulk stats call per listing,
guest-agent calls), which is all the exporter sees of a launcher; a real QEMU VM per pod would
add the hypervisor's own cost (the same in both setups below) and a few hundred MB each.
The test driver has no guest agent: each VM's agent queries answer "unsupported", so a
steady poll is the listing and the agents' back-off, alike in both setups.

``guestload serve`` then runs in node mode (``--libvirt.socket-glob``) against them, and the
benchmark prints its first-poll time (start to a published poll with every VM), its steady
CPU per poll and per VM (its threads' CPU from ``/proc/<pid>/task/*/schedstat`` over
``--seconds``, divided by the polls made), RSS and open file descriptors; then the same for
ONE libvirtd serving the same number of domains through one connection (``--libvirt.uri``).
Goal: per-VM poll CPU at most 1.5 times the single connection's.

``--faults`` then hangs (SIGSTOP), resumes, kills, restarts and deletes 10 % of the launchers
in turn while the rest keep answering, scraping ``/metrics`` all along, and checks the goals
of :mod:`guestload_lab.launcher_faults` (healthy VMs never late by more than one interval nor
missing, a hung socket reported down within two intervals, a deleted launcher's series gone
within one). Every daemon started here is stopped at the end.

    python -m bench.launchers --launchers 110 --interval 5s --seconds 60 --faults
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import libvirt

from bench.common import (
    RESULTS_DIR,
    exit_on_sigterm,
    format_table,
    memory_bytes,
    metric_values,
    threads_cpu_seconds,
    write_results,
)
from guestload.settings import parse_duration
from guestload.sources.libvirt import process_event_loop
from guestload_lab.launcher_faults import MetricsWatch, run_fault_phases
from guestload_lab.launchers import URI_TEMPLATE, LauncherPod, kubelet_socket_glob, launcher_pods
from guestload_lab.libvirtd import TestDriverLibvirtd, short_directory
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Exporter

TARGET_RATIO = 1.5
FAULT_SHARE = 0.1
NAMESPACE = "bench"


@contextlib.contextmanager
def one_daemon(count: int) -> Iterator[str]:
    """One test-driver libvirtd running ``count`` KubeVirt-named domains; its URI."""
    daemon = TestDriverLibvirtd(directory=short_directory("guestload-one-"))
    connection: libvirt.virConnect | None = None
    try:
        daemon.start()
        connection = libvirt.open(daemon.uri)  # holds the test driver's instance
        connection.lookupByName("test").destroy()
        for index in range(count):
            connection.createXML(_domain_xml(f"{NAMESPACE}_vm-{index:03d}"), 0)
        yield daemon.uri
    finally:
        if connection is not None:
            with contextlib.suppress(libvirt.libvirtError):
                connection.close()
        daemon.stop()
        shutil.rmtree(daemon.directory, ignore_errors=True)


def _domain_xml(name: str) -> str:
    return f"""<domain type='test'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type>hvm</type></os>
  <metadata><kubevirt xmlns="http://kubevirt.io"><uid>{uuid.uuid4()}</uid></kubevirt></metadata>
</domain>"""


def bare_listing_ms_per_vm(uris: Sequence[str], *, vms: int, rounds: int = 50) -> float:
    """Client CPU (this process, guestload's event loop) of one bulk stats call per URI,
    per VM: the floor of a listing without the exporter around it."""
    process_event_loop()
    connections = [libvirt.open(uri) for uri in uris]
    groups = libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_VCPU
    flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING
    try:
        for connection in connections:
            connection.setKeepAlive(5, 3)
            connection.getAllDomainStats(groups, flags)
        started = time.process_time()
        for _ in range(rounds):
            for connection in connections:
                connection.getAllDomainStats(groups, flags)
        return 1000 * (time.process_time() - started) / rounds / vms
    finally:
        for connection in connections:
            with contextlib.suppress(libvirt.libvirtError):
                connection.close()


def pod_uris(pods: Sequence[LauncherPod], directory: Path) -> list[str]:
    """URIs of the pods' sockets through short symlinks (a kubelet path is too long)."""
    uris = []
    for index, pod in enumerate(pods):
        link = directory / str(index)
        link.symlink_to(pod.socket_path)
        uris.append(URI_TEMPLATE.format(socket=link))
    return uris


def start_exporter(
    *, registry: ProcessRegistry, workdir: Path, interval: str, source_args: Sequence[str]
) -> Exporter:
    exporter = Exporter(
        libvirt_uri=None,
        node="bench-node",
        workdir=workdir,
        registry=registry,
        interval=interval,
        agent_timeout=None,
        extra_args=tuple(source_args),
    )
    exporter.start(timeout=120)
    return exporter


def _counters(exporter: Exporter) -> tuple[float, float]:
    """Polls so far, and running domains in the last one."""
    text = exporter.scrape_text()
    return sum(metric_values(text, "guestload_polls_total")), sum(
        metric_values(text, "guestload_domains")
    )


def _wait_polls(exporter: Exporter, *, polls: float, domains: int, timeout: float) -> float:
    """Wait until ``polls`` polls are done and the last listed ``domains``; seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(OSError):
            done, listed = _counters(exporter)
            if done >= polls and listed == domains:
                return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"no poll with {domains} domains in {timeout:.0f} s\n{exporter.log()}")


def measure_setup(
    *, name: str, vms: int, interval: str, seconds: float, source_args: Sequence[str]
) -> dict[str, Any]:
    """Start guestload on one setup: first-poll time, then a steady window's CPU and memory."""
    with (
        ProcessRegistry() as registry,
        tempfile.TemporaryDirectory(prefix=f"guestload-bench-{name}-") as workdir,
    ):
        started = time.monotonic()
        exporter = start_exporter(
            registry=registry, workdir=Path(workdir), interval=interval, source_args=source_args
        )
        first_poll = time.monotonic() - started
        first_poll += _wait_polls(exporter, polls=1, domains=vms, timeout=120)
        _wait_polls(exporter, polls=3, domains=vms, timeout=10 * parse_duration(interval))
        pid = exporter.process.pid
        polls_before, _ = _counters(exporter)
        cpu_before = threads_cpu_seconds(pid)
        time.sleep(seconds)
        cpu = threads_cpu_seconds(pid) - cpu_before
        polls_after, listed = _counters(exporter)
        polls = polls_after - polls_before
        result = {
            "setup": name,
            "vms": vms,
            "vms_listed_at_end": listed,
            "first_poll_seconds": first_poll,
            "window_seconds": seconds,
            "polls": polls,
            "cpu_seconds": cpu,
            "cpu_ms_per_poll": 1000 * cpu / polls if polls else float("nan"),
            "cpu_ms_per_vm_poll": 1000 * cpu / polls / vms if polls else float("nan"),
            "rss_bytes": memory_bytes(pid)["rss"],
            "open_fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task")),
        }
        exporter.stop()
    return result


def measure_faults(
    pods: Sequence[LauncherPod], *, kubelet_root: Path, interval: str, step: float
) -> dict[str, Any]:
    """Run the fault phases on every tenth launcher against a node-mode exporter."""
    faulty_count = max(1, round(len(pods) * FAULT_SHARE))
    faulty, healthy = pods[:faulty_count], pods[faulty_count:]
    with (
        ProcessRegistry() as registry,
        tempfile.TemporaryDirectory(prefix="guestload-bench-faults-") as workdir,
    ):
        exporter = start_exporter(
            registry=registry,
            workdir=Path(workdir),
            interval=interval,
            source_args=_node_args(kubelet_root),
        )
        _wait_polls(exporter, polls=2, domains=len(pods), timeout=120)
        watch = MetricsWatch(exporter.scrape_text, step=step)
        watch.start()
        try:
            result = run_fault_phases(
                watch, faulty=faulty, healthy=healthy, interval=parse_duration(interval)
            )
        finally:
            watch.stop()
        result["exporter_tracebacks"] = exporter.log().count("Traceback")
        exporter.stop()
    return result


def _node_args(kubelet_root: Path) -> list[str]:
    return [
        "--libvirt.socket-glob",
        kubelet_socket_glob(kubelet_root),
        "--libvirt.socket-uri-template",
        URI_TEMPLATE,
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    process_event_loop()  # before the first connection, the pods' own included
    kubelet_root = Path(tempfile.mkdtemp(prefix="guestload-bench-kubelet-"))
    try:
        with launcher_pods(args.launchers, kubelet_root, namespace=NAMESPACE) as pods:
            node = measure_setup(
                name="node-mode",
                vms=args.launchers,
                interval=args.interval,
                seconds=args.seconds,
                source_args=_node_args(kubelet_root),
            )
            links = short_directory("guestload-links-")
            try:
                node_floor = bare_listing_ms_per_vm(pod_uris(pods, links), vms=args.launchers)
            finally:
                shutil.rmtree(links, ignore_errors=True)
            faults = (
                measure_faults(
                    pods, kubelet_root=kubelet_root, interval=args.interval, step=args.step
                )
                if args.faults
                else None
            )
    finally:
        shutil.rmtree(kubelet_root, ignore_errors=True)
    with one_daemon(args.launchers) as uri:
        single = measure_setup(
            name="one-connection",
            vms=args.launchers,
            interval=args.interval,
            seconds=args.seconds,
            source_args=["--libvirt.uri", uri],
        )
        single_floor = bare_listing_ms_per_vm([uri], vms=args.launchers)
    ratio = node["cpu_ms_per_vm_poll"] / single["cpu_ms_per_vm_poll"]
    # What one connection would cost with a listing call per VM: the floor of node mode.
    floor_ratio = (single["cpu_ms_per_vm_poll"] + node_floor - single_floor) / single[
        "cpu_ms_per_vm_poll"
    ]
    return {
        "launchers": args.launchers,
        "interval": args.interval,
        "setups": [node, single],
        "ratio": ratio,
        "bare_listing_ms_per_vm": {"node-mode": node_floor, "one-connection": single_floor},
        "floor_ratio": floor_ratio,
        "faults": faults,
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        [
            setup["setup"],
            setup["vms"],
            setup["first_poll_seconds"],
            setup["cpu_ms_per_poll"],
            setup["cpu_ms_per_vm_poll"],
            setup["rss_bytes"] / 2**20,
            setup["open_fds"],
            setup["threads"],
        ]
        for setup in result["setups"]
    ]
    headers = [
        "setup",
        "VMs",
        "first poll s",
        "CPU ms/poll",
        "CPU ms/VM/poll",
        "RSS MiB",
        "fds",
        "threads",
    ]
    return format_table(headers, rows)


def fault_lines(faults: dict[str, Any]) -> list[str]:
    lines = [
        f"faults: {faults['faulty']} of {faults['faulty'] + faults['healthy']} launchers, "
        f"interval {faults['interval_seconds']:g} s, "
        f"scrape every {faults['scrape_step_seconds']:g} s"
    ]
    lines += [f"  {what}: {seconds:.2f} s" for what, seconds in faults["seconds_until"].items()]
    for name, goal in faults["goals"].items():
        verdict = "pass" if goal["passed"] else "FAIL"
        lines.append(f"  {verdict} {name}: {goal['measured']:.2f} (limit {goal['limit']:.2f})")
    return lines


def failures(result: dict[str, Any]) -> list[str]:
    failed = []
    if result["ratio"] > TARGET_RATIO:
        failed.append(f"per-VM CPU ratio {result['ratio']:.2f} > {TARGET_RATIO}")
    if result["faults"] is not None:
        failed += [name for name, goal in result["faults"]["goals"].items() if not goal["passed"]]
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.launchers", description=__doc__)
    parser.add_argument("--launchers", type=int, default=110, help="fake launcher pods")
    parser.add_argument("--interval", default="5s", help="guestload's poll interval")
    parser.add_argument("--seconds", type=float, default=60.0, help="steady window per setup")
    parser.add_argument("--faults", action="store_true", help="run the fault phases too")
    parser.add_argument("--step", type=float, default=0.25, help="scrape step of --faults")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "launchers.json")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    result = run(args)
    print(table(result))
    floors = result["bare_listing_ms_per_vm"]
    print(
        f"bare listing (one bulk stats call per connection, client CPU): "
        f"{floors['node-mode']:.3f} ms per VM with a connection each vs "
        f"{floors['one-connection']:.3f} ms with one; one connection plus that difference: "
        f"ratio {result['floor_ratio']:.2f}"
    )
    if result["faults"] is not None:
        print("\n".join(fault_lines(result["faults"])))
    failed = failures(result)
    write_results(args.out, {"benchmark": "launchers", "result": result, "failed": failed})
    print(f"wrote {args.out}")
    for failure in failed:
        print(f"FAILED: {failure}")
    node, single = result["setups"]
    print(
        f"node mode {result['launchers']} launchers: per-VM poll CPU "
        f"{node['cpu_ms_per_vm_poll']:.3f} ms vs one connection "
        f"{single['cpu_ms_per_vm_poll']:.3f} ms (ratio {result['ratio']:.2f})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
