"""The Grafana dashboard: guest load against vCPUs, run-queue, causes, agent and exporter."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from monitoring.rules import (
    DISK_REQUESTS,
    LOAD_PER_VCPU,
    LOAD_SEMANTICS,
    LOAD_WARMING_UP,
    PRESSURE_CAUSE,
    VCPU_COUNT,
    VCPU_QUEUE,
    Records,
    delay_ratio_record,
    disk_throttle_use,
)
from monitoring.settings import Settings

UID = "guestload-vmi-load"
"""Stable: links and provisioning refer to the dashboard by it."""

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
VM_SELECTOR = 'namespace=~"$namespace", name=~"$name", node=~"$node"'
VM_LEGEND = "{{namespace}}/{{name}} ({{node}})"
DISK_LEGEND = "{{namespace}}/{{name}} {{device}} ({{node}})"


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True, slots=True)
class Panel:
    """A panel: its kind, title, queries and display settings."""

    kind: str
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    thresholds: tuple[tuple[str, float], ...] = ()
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)


def render_dashboard(settings: Settings) -> str:
    """The dashboard as Grafana's JSON model (pretty-printed, stable key order)."""
    ids = count(1)
    panels: list[dict[str, Any]] = []
    x = y = 0
    for section, members in _sections(settings):
        panels.append(
            {
                "id": next(ids),
                "type": "row",
                "title": section,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        x = 0
        row_height = 0
        for panel in members:
            if x + panel.width > 24:
                x, y = 0, y + row_height
                row_height = 0
            panels.append(_panel_json(panel, panel_id=next(ids), x=x, y=y))
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    dashboard = {
        "uid": UID,
        "title": "guestload / VM guest load",
        "description": (
            "Guest load average of libvirt and KubeVirt VMs read through the QEMU guest agent, "
            "against each VM's vCPUs; where the CPU time went and the cause of long queues "
            "(cpu, io, host); guest agent and exporter health."
        ),
        "tags": ["guestload", "kubevirt", "libvirt", "vm"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": _variables()},
        "panels": panels,
    }
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def _sections(settings: Settings) -> list[tuple[str, list[Panel]]]:
    exporter = settings.exporter_selector
    vm = VM_SELECTOR
    warning = _number(settings.alert("GuestVCPUQueueHighWarning").threshold("queue"))
    critical = _number(settings.alert("GuestVCPUQueueHighCritical").threshold("queue"))
    per_vcpu = _number(settings.alert("GuestVCPUSaturation").threshold("load_per_vcpu"))
    delay = _number(settings.alert("GuestVCPUHostContention").threshold("delay_ratio"))
    load = "max by (namespace, name, node) (kubevirt_vmi_guest_load_{window}{{{vm}}})"
    return [
        (
            "Guest load",
            [
                Panel(
                    kind="timeseries",
                    title="Guest load and vCPUs",
                    description=(
                        "Load averages reported by the guest kernel (runnable plus "
                        "uninterruptible tasks) against the VM's online vCPUs."
                    ),
                    queries=(
                        *(
                            Query(load.format(window=window, vm=vm), f"{VM_LEGEND} load {window}")
                            for window in ("1m", "5m", "15m")
                        ),
                        Query(f"{VCPU_COUNT}{{{vm}}}", f"{VM_LEGEND} vCPUs"),
                    ),
                ),
                Panel(
                    kind="timeseries",
                    title="Run-queue length (1m load minus vCPUs)",
                    description=(
                        "Runnable tasks beyond one per vCPU. Lines: warning and critical "
                        "alert thresholds."
                    ),
                    queries=(Query(f"{VCPU_QUEUE}{{{vm}}}", VM_LEGEND),),
                    thresholds=(("orange", warning), ("red", critical)),
                ),
                Panel(
                    kind="timeseries",
                    title="5-minute load per vCPU",
                    description="Saturation: above the line for long, the VM needs more vCPUs.",
                    queries=(Query(f"{LOAD_PER_VCPU}{{{vm}}}", VM_LEGEND),),
                    thresholds=(("orange", per_vcpu),),
                ),
                Panel(
                    kind="timeseries",
                    title="vCPU delay ratio (host contention)",
                    description=(
                        "Share of time the VM's vCPUs were runnable but waited for a host CPU "
                        "(the guest's steal time). High delay with high load: the host is "
                        "overcommitted. Low delay with high load: the guest needs more vCPUs."
                    ),
                    queries=(Query(f"{delay_ratio_record(settings)}{{{vm}}}", VM_LEGEND),),
                    unit="percentunit",
                    thresholds=(("orange", delay),),
                ),
                Panel(
                    kind="table",
                    title="Top 10 VMs by run-queue",
                    description="The VMs with the longest run-queue now.",
                    queries=(Query(f"topk(10, {VCPU_QUEUE}{{{vm}}})", instant=True),),
                    height=9,
                ),
                Panel(
                    kind="table",
                    title="Top 10 VMs by vCPU delay ratio",
                    description="The VMs whose vCPUs wait longest for a host CPU now.",
                    queries=(
                        Query(f"topk(10, {delay_ratio_record(settings)}{{{vm}}})", instant=True),
                    ),
                    unit="percentunit",
                    height=9,
                ),
            ],
        ),
        (
            "Why is it slow: where the CPU time went",
            _cause_panels(settings),
        ),
        (
            "Guest agent",
            [
                Panel(
                    kind="bargauge",
                    title="Running VMs by guest agent state",
                    description=(
                        "Per agent query (load: the load average; cpustats: the guest's CPU "
                        "statistics). ok: the agent answers it; any other state: no data."
                    ),
                    queries=(
                        Query(
                            f"count by (query, state) (guestload_agent_state{{{exporter}, {vm}}})",
                            "{{query}} {{state}}",
                            instant=True,
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    kind="table",
                    title="VMs without guest load",
                    description="Running VMs whose agent does not report a load average, and why.",
                    queries=(
                        Query(
                            f'guestload_agent_state{{{exporter}, {vm}, query="load", state!="ok"}}',
                            instant=True,
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    kind="table",
                    title="VMs without guest CPU statistics",
                    description=(
                        "Running VMs whose agent does not report CPU statistics (Windows, an "
                        "old or restricted agent): their CPU busy share comes from the host's "
                        "vCPU run time, and iowait and steal are unknown."
                    ),
                    queries=(
                        Query(
                            f"guestload_agent_state{{{exporter}, {vm}, "
                            'query="cpustats", state!="ok"}',
                            instant=True,
                        ),
                    ),
                    width=8,
                ),
            ],
        ),
        (
            "Exporter health",
            [
                Panel(
                    kind="stat",
                    title="Exporter targets up",
                    description="Scrape health of each guestload exporter.",
                    queries=(Query(f"up{{{exporter}}}", "{{instance}}", instant=True),),
                    width=6,
                    options={"mappings": _up_mappings()},
                ),
                Panel(
                    kind="stat",
                    title="libvirt connected",
                    description="Whether each exporter holds a libvirt connection.",
                    queries=(
                        Query(f"guestload_libvirt_up{{{exporter}}}", "{{instance}}", instant=True),
                    ),
                    width=6,
                    options={"mappings": _up_mappings()},
                ),
                Panel(
                    kind="timeseries",
                    title="Running domains",
                    description="Domains seen in each exporter's last poll.",
                    queries=(Query(f"guestload_domains{{{exporter}}}", "{{instance}}"),),
                    width=12,
                ),
                Panel(
                    kind="timeseries",
                    title="Poll duration",
                    description="Duration of each exporter's last poll.",
                    queries=(
                        Query(f"guestload_poll_duration_seconds{{{exporter}}}", "{{instance}}"),
                    ),
                    unit="s",
                    width=8,
                ),
                Panel(
                    kind="timeseries",
                    title="Age of the last successful poll",
                    description="Grows without bound when polls fail or hang.",
                    queries=(
                        Query(
                            f"time() - guestload_last_poll_success_timestamp_seconds{{{exporter}}}",
                            "{{instance}}",
                        ),
                    ),
                    unit="s",
                    width=8,
                ),
                Panel(
                    kind="timeseries",
                    title="Poll failures and guest agent calls",
                    description="Failed polls, and agent calls by outcome, per second.",
                    queries=(
                        Query(
                            f"rate(guestload_poll_failures_total{{{exporter}}}[$__rate_interval])",
                            "{{instance}} poll failures",
                        ),
                        Query(
                            "sum by (query, state) (rate(guestload_agent_calls_total"
                            f"{{{exporter}}}[$__rate_interval]))",
                            "agent {{query}} calls {{state}}",
                        ),
                    ),
                    unit="ops",
                    width=8,
                ),
            ],
        ),
    ]


def _cause_panels(settings: Settings) -> list[Panel]:
    vm = VM_SELECTOR
    records = Records.of(settings)
    window = settings.window("vcpu_rate")
    busy = _number(settings.cause("busy_share"))
    iowait = _number(settings.cause("iowait_share"))
    contention = _number(settings.cause("contention_share"))
    swap_in = _number(settings.cause("swap_in_bytes_per_second"))
    faults = _number(settings.cause("major_faults_per_second"))
    throttled = _number(settings.cause("throttle_use_share"))
    return [
        Panel(
            kind="timeseries",
            title="CPU busy share",
            description=(
                f"Share of the VM's CPU time spent on guest work ({window} rate): from the "
                "guest's CPU statistics (guest view), else from the host's vCPU run time "
                f"(host view). A long queue with the share below the line ({busy}) is tasks "
                "in uninterruptible sleep (I/O, NFS, locks), not waiting for a vCPU; the "
                "causes use the guest's share of the last poll where it has one."
            ),
            queries=(Query(f"{records.cpu_busy}{{{vm}}}", f"{VM_LEGEND} {{{{source}}}} view"),),
            unit="percentunit",
            thresholds=(("orange", busy),),
            width=8,
        ),
        Panel(
            kind="timeseries",
            title="iowait share",
            description=(
                "Share of the VM's CPU time idle while I/O was outstanding, from the guest's "
                f"CPU statistics only. Above the line ({iowait}) with the CPU idle: the queue "
                "is tasks waiting for storage."
            ),
            queries=(Query(f"{records.guest_iowait}{{{vm}}}", VM_LEGEND),),
            unit="percentunit",
            thresholds=(("orange", iowait),),
            width=8,
        ),
        Panel(
            kind="timeseries",
            title="Host contention share (delay or steal)",
            description=(
                "Share of time the vCPUs were runnable but waited for a host CPU: the larger "
                "of the vCPU delay ratio and the guest's steal share. Above the line "
                f"({contention}) the host is a cause."
            ),
            queries=(Query(f"{records.contention}{{{vm}}}", VM_LEGEND),),
            unit="percentunit",
            thresholds=(("orange", contention),),
            width=8,
        ),
        Panel(
            kind="timeseries",
            title="Swap read back",
            description=(
                f"Bytes a second the guest read back from swap ({window} rate), from the "
                "balloon's statistics (guestload or KubeVirt's virt-handler). Above the line "
                f"({swap_in} B/s), or with major page faults above {faults}/s, the guest "
                "thrashes: its cause is memory."
            ),
            queries=(Query(f"{records.swap_in}{{{vm}}}", VM_LEGEND),),
            unit="Bps",
            thresholds=(("orange", swap_in),),
            width=12,
        ),
        Panel(
            kind="timeseries",
            title="Major page faults",
            description=(
                f"Page faults a second that had to read a disk ({window} rate): swap, or files "
                f"no longer cached. Above the line ({faults}/s) the guest thrashes."
            ),
            queries=(Query(f"{records.major_faults}{{{vm}}}", VM_LEGEND),),
            unit="short",
            thresholds=(("orange", faults),),
            width=12,
        ),
        Panel(
            kind="timeseries",
            title="Disk requests (host view)",
            description=(
                "Requests a second the host served each of the VM's disks over the exporter's "
                "last poll, reads and writes together. A stalled guest whose disk serves few "
                "requests waits for slow or failing storage; one whose disk serves its cap "
                "is held back by its own throttle (next panel)."
            ),
            queries=(Query(f"{DISK_REQUESTS}{{{vm}}}", DISK_LEGEND),),
            unit="reqps",
            width=12,
        ),
        Panel(
            kind="timeseries",
            title="Disk throttle use",
            description=(
                "Each capped disk's use of its tightest throttle cap (its <iotune> IOPS or bytes "
                f"a second) over the last poll. At the line ({throttled}) and above, the disk "
                "runs at its cap: raising the cap, not the storage, shortens the queue."
            ),
            queries=(Query(disk_throttle_use(vm), DISK_LEGEND),),
            unit="percentunit",
            thresholds=(("orange", throttled),),
            width=12,
        ),
        Panel(
            kind="timeseries",
            title="Long queues by cause",
            description=(
                "VMs whose run-queue is above the warning threshold, by the cause the rules "
                "name: cpu (vCPUs busy), io (blocked on I/O, vCPUs idle), blocked (vCPUs idle "
                "without iowait: NFS, FUSE, locks), memory (the guest thrashes), host (waiting "
                "for a host CPU), unknown (no busy share yet; the reason label says why). A VM "
                "can have two causes."
            ),
            queries=(Query(f"count by (cause) ({PRESSURE_CAUSE}{{{vm}}})", "{{cause}}"),),
        ),
        Panel(
            kind="table",
            title="Load semantics",
            description=(
                "What each VM's load counts: linux (runnable and uninterruptible tasks, the "
                "ones its vCPUs run included; the queue is the load minus the vCPUs) or windows "
                "(threads waiting for a CPU; the queue is the load itself). A Windows VM in its "
                "first minutes also shows in the warming-up query: its averages start at 0."
            ),
            queries=(
                Query(f"{LOAD_SEMANTICS}{{{vm}}}", instant=True),
                Query(f"{LOAD_WARMING_UP}{{{vm}}}", instant=True),
            ),
        ),
        Panel(
            kind="table",
            title="VMs with a long queue and its cause",
            description="One row per VM and cause now; a VM with two causes has two rows.",
            queries=(Query(f"{PRESSURE_CAUSE}{{{vm}}}", instant=True),),
        ),
    ]


def _panel_json(panel: Panel, *, panel_id: int, x: int, y: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": color, "value": value} for color, value in panel.thresholds]
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "thresholds": {"mode": "absolute", "steps": steps},
    }
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 0,
            "showPoints": "never",
            "thresholdsStyle": {"mode": "dashed" if panel.thresholds else "off"},
        }
    if "mappings" in panel.options:
        defaults["mappings"] = panel.options["mappings"]
    targets = [
        {
            "datasource": DATASOURCE,
            "refId": chr(ord("A") + index),
            "expr": query.expr,
            "legendFormat": query.legend,
            "instant": query.instant,
            "range": not query.instant,
            **({"format": "table"} if panel.kind == "table" else {}),
        }
        for index, query in enumerate(panel.queries)
    ]
    document: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": targets,
    }
    if panel.kind == "table":
        document["transformations"] = [
            {"id": "organize", "options": {"excludeByName": {"Time": True}}}
        ]
    return document


def _variables() -> list[dict[str, Any]]:
    variables: list[dict[str, Any]] = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "hide": 0,
            "refresh": 1,
            "regex": "",
        }
    ]
    scopes = {
        "namespace": "",
        "name": '{namespace=~"$namespace"}',
        "node": '{namespace=~"$namespace", name=~"$name"}',
    }
    for name, scope in scopes.items():
        query = f"label_values({VCPU_COUNT}{scope}, {name})"
        variables.append(
            {
                "name": name,
                "label": name.capitalize(),
                "type": "query",
                "datasource": DATASOURCE,
                "query": {"query": query, "refId": f"{name}-variable"},
                "refresh": 2,
                "includeAll": True,
                "multi": True,
                "allValue": ".*",
                "current": {"text": "All", "value": "$__all"},
                "sort": 1,
                "hide": 0,
                "regex": "",
            }
        )
    return variables


def _up_mappings() -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {
                "0": {"text": "down", "color": "red", "index": 0},
                "1": {"text": "up", "color": "green", "index": 1},
            },
        }
    ]


def _number(literal: str) -> float | int:
    value = float(literal)
    return int(value) if value.is_integer() else value
