"""The one-command demo: five real VMs, guestload, Prometheus, Alertmanager, and a live view.

``python -m guestload_lab demo`` installs what is missing, boots an idle VM, a VM running
``stress-ng``, a VM whose tasks wait on a throttled disk, a VM whose tasks hang on a FUSE mount
whose daemon never answers (blocked on no disk) and a VM without a guest agent under a private
libvirt daemon, starts guestload, Prometheus (with the project's rules) and
Alertmanager (delivering to a local webhook), prints their URLs and redraws a table of every
VM until Ctrl-C: its load, queue, where its CPU time goes, the cause the rules name for a long
queue, and the alerts firing. Then it stops everything it started.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import urllib.error
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from guestload_lab.deps import ensure_dependencies
from guestload_lab.image import build_image
from guestload_lab.libvirtd import PrivateLibvirtd
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import Exporter, Monitoring, Prometheus, WebhookReceiver
from guestload_lab.vm import Hypervisor, VmSpec, wait_all_agents

NAMESPACE = "demo"
NODE = "demo-node"
DISK_IOPS = 5
"""The stalled VM's disk: 5 I/O operations a second, as a badly throttled volume."""
DISK_READERS = 32
"""Tasks waiting on that disk: enough for a queue above 10 in a 1-vCPU guest within a minute."""
BLOCKED_TASKS = 32
"""Tasks hung on the FUSE mount: the same queue as the stalled VM's, without any iowait."""
BUSY = "namespace_name_node:guestload_cause_busy:ratio"
IOWAIT = "namespace_name_node:guestload_cause_iowait:ratio"
CAUSE = "namespace_name_node:guestload_pressure_cause:info"
REFRESH_SECONDS = 2.0
CLEAR_SCREEN = "\x1b[H\x1b[2J"


@dataclass(frozen=True, slots=True)
class VmRow:
    """One line of the live view."""

    namespace: str
    name: str
    agent_state: str
    vcpus: int | None = None
    load: tuple[float, float, float] | None = None
    queue: float | None = None
    busy: float | None = None
    """Share of vCPU time spent running guest work (the rules' busy share)."""
    iowait: float | None = None
    causes: tuple[str, ...] = ()
    """What the rules name as the cause of a long queue: cpu, io, blocked, host or unknown."""
    alerts: tuple[str, ...] = ()


def collect_rows(exporter: Exporter, prometheus: Prometheus) -> list[VmRow]:
    """Every VM the exporter reports, with the queue and firing alerts Prometheus has for it."""
    samples = exporter.scrape()
    states: dict[tuple[str, str], str] = {}
    loads: dict[tuple[str, str], dict[str, float]] = {}
    vcpus: dict[tuple[str, str], set[str]] = {}
    for sample in samples:
        if "namespace" not in sample.labels:
            continue
        key = (sample.labels["namespace"], sample.labels["name"])
        if (
            sample.name == "guestload_agent_state"
            and sample.value == 1.0
            and sample.labels.get("query") == "load"
        ):
            states[key] = sample.labels["state"]
        elif sample.name.startswith("kubevirt_vmi_guest_load_"):
            loads.setdefault(key, {})[sample.name.rsplit("_", 1)[1]] = sample.value
        elif sample.name == "kubevirt_vmi_vcpu_seconds_total":
            vcpus.setdefault(key, set()).add(sample.labels["id"])
    recorded: dict[str, dict[tuple[str, str], float]] = {}
    causes: dict[tuple[str, str], list[str]] = {}
    firing: dict[tuple[str, str], list[str]] = {}
    try:
        for series in ("kubevirt_vmi_guest_vcpu_queue", BUSY, IOWAIT):
            for item in prometheus.query(series):
                labels = item["metric"]
                key = (labels["namespace"], labels["name"])
                recorded.setdefault(series, {})[key] = float(item["value"][1])
        for item in prometheus.query(CAUSE):
            labels = item["metric"]
            causes.setdefault((labels["namespace"], labels["name"]), []).append(labels["cause"])
        for alert in prometheus.alerts():
            labels = alert["labels"]
            if alert["state"] == "firing" and "name" in labels:
                key = (labels.get("namespace", ""), labels["name"])
                firing.setdefault(key, []).append(labels["alertname"])
    except (OSError, urllib.error.URLError):
        pass  # Prometheus restarting or busy: the view shows what the exporter has.
    rows = []
    for key in sorted(states):
        load = loads.get(key, {})
        row_load = (load["1m"], load["5m"], load["15m"]) if len(load) == 3 else None
        rows.append(
            VmRow(
                namespace=key[0],
                name=key[1],
                agent_state=states[key],
                vcpus=len(vcpus[key]) if key in vcpus else None,
                load=row_load,
                queue=recorded.get("kubevirt_vmi_guest_vcpu_queue", {}).get(key),
                busy=recorded.get(BUSY, {}).get(key),
                iowait=recorded.get(IOWAIT, {}).get(key),
                causes=tuple(sorted(causes.get(key, []))),
                alerts=tuple(sorted(firing.get(key, []))),
            )
        )
    return rows


def render(
    rows: Sequence[VmRow], *, urls: Mapping[str, str], notifications: int, uptime: float
) -> str:
    """The live view as text."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = [f"guestload demo, up {uptime:.0f} s (Ctrl-C stops and cleans up)", ""]
    lines += [f"  {name:<13} {url}" for name, url in urls.items()]
    lines += [
        "",
        f"{'VM':<26} {'vCPUs':>5} {'load 1m':>8} {'5m':>6} {'15m':>6} {'queue':>6}"
        f" {'busy':>5} {'iowait':>6}  {'cause':<9} {'agent':<15} firing alerts",
    ]
    for row in rows:
        load = row.load or (None, None, None)
        lines.append(
            f"{row.namespace + '/' + row.name:<26} {row.vcpus if row.vcpus else '-':>5}"
            f" {number(load[0]):>8} {number(load[1]):>6} {number(load[2]):>6}"
            f" {number(row.queue):>6} {number(row.busy):>5} {number(row.iowait):>6}"
            f"  {','.join(row.causes) or '-':<9} {row.agent_state:<15}"
            f" {', '.join(row.alerts) or '-'}"
        )
    if not rows:
        lines.append("(waiting for the exporter's first poll)")
    lines += ["", f"Alertmanager webhook notifications received: {notifications}"]
    return "\n".join(lines) + "\n"


def run_demo(*, workdir: Path, stress_workers: int, duration: float | None, out: TextIO) -> None:
    """Set everything up, show the live view for ``duration`` seconds (None: until Ctrl-C)."""
    started = time.monotonic()

    def say(message: str) -> None:
        out.write(f"[{time.monotonic() - started:5.1f} s] {message}\n")
        out.flush()

    say("installing system packages and fetching the guest kernel (quick when present)")
    parts = ensure_dependencies()
    full, slim = build_image(parts), build_image(parts, with_stress=False)
    say(f"guest image ready: {full.initrd}")
    with (
        PrivateLibvirtd(workdir=workdir / "libvirt") as daemon,
        Hypervisor(daemon.uri) as hypervisor,
        ProcessRegistry() as registry,
        WebhookReceiver() as webhook,
    ):
        say(f"private libvirtd up: {daemon.uri}")
        serial = workdir / "serial"
        idle = hypervisor.create(
            VmSpec.kubevirt(NAMESPACE, "idle", str(uuid.uuid4())), slim, log_dir=serial
        )
        stressed = hypervisor.create(
            VmSpec.kubevirt(NAMESPACE, "stressed", str(uuid.uuid4())), full, log_dir=serial
        )
        stalled = hypervisor.create(
            VmSpec.kubevirt(NAMESPACE, "io-stalled", str(uuid.uuid4()), disk_iops=DISK_IOPS),
            slim,
            log_dir=serial,
        )
        blocked = hypervisor.create(
            VmSpec.kubevirt(NAMESPACE, "blocked", str(uuid.uuid4())), slim, log_dir=serial
        )
        no_agent = hypervisor.create(VmSpec(name="no-agent", channel=False), slim, log_dir=serial)
        wait_all_agents([idle, stressed, stalled, blocked], timeout=180.0)
        no_agent.wait_booted(timeout=120.0)
        stressed.start_stress(stress_workers, seconds=3600)
        stalled.start_disk_readers(DISK_READERS)
        blocked.start_blocked_tasks(BLOCKED_TASKS)
        say(
            f"5 VMs booted (TCG); stress-ng --cpu {stress_workers} started in {stressed.name},"
            f" {DISK_READERS} direct readers of a {DISK_IOPS}-IOPS disk in {stalled.name},"
            f" {BLOCKED_TASKS} tasks hung on a FUSE mount in {blocked.name}"
        )

        monitoring = Monitoring.start(
            libvirt_uri=daemon.uri,
            node=NODE,
            workdir=workdir / "services",
            registry=registry,
            webhook=webhook,
        )
        urls = {
            "guestload": f"{monitoring.exporter.url}/metrics",
            "Prometheus": monitoring.prometheus.url,
            "Alertmanager": monitoring.alertmanager.url,
            "webhook": webhook.url,
            "work folder": str(workdir),
        }
        say("guestload, Prometheus and Alertmanager up")
        shown_since = time.monotonic()
        clear = CLEAR_SCREEN if out.isatty() else "\n"
        while duration is None or time.monotonic() - shown_since < duration:
            view = render(
                collect_rows(monitoring.exporter, monitoring.prometheus),
                urls=urls,
                notifications=len(webhook.payloads()),
                uptime=time.monotonic() - started,
            )
            out.write(clear + view)
            out.flush()
            time.sleep(REFRESH_SECONDS)
        say("stopping everything")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guestload_lab", description="guestload's real-VM lab."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="five VMs, the exporter and alerting, live")
    demo.add_argument(
        "--workdir", type=Path, help="keep the lab's files here (default: a temp dir)"
    )
    demo.add_argument(
        "--stress-workers",
        type=int,
        default=32,
        help="stress-ng --cpu N in the stressed VM; 32 fires both queue alerts (default: 32)",
    )
    demo.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: run until Ctrl-C)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            run_demo(
                workdir=args.workdir.resolve(),
                stress_workers=args.stress_workers,
                duration=args.duration,
                out=sys.stdout,
            )
        else:
            with tempfile.TemporaryDirectory(prefix="guestload-demo-") as folder:
                run_demo(
                    workdir=Path(folder),
                    stress_workers=args.stress_workers,
                    duration=args.duration,
                    out=sys.stdout,
                )
    except KeyboardInterrupt:
        sys.stdout.write("\nstopped; every process the demo started is gone\n")
    return 0
