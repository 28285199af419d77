"""The recording rules and alerts, built from the settings; rendered as a Prometheus rule file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from monitoring.settings import Settings
from monitoring.yamltext import dump_yaml

VM = "namespace, name, node"
"""The labels that identify a VM; every guest rule aggregates and matches on exactly these."""

VCPU_COUNT = "kubevirt_vmi_vcpu_count"
VCPU_QUEUE = "kubevirt_vmi_guest_vcpu_queue"
LOAD_PER_VCPU = "namespace_name_node:kubevirt_vmi_guest_load_5m_per_vcpu:ratio"
DELAY_RATIO_PREFIX = "namespace_name_node:kubevirt_vmi_vcpu_delay:ratio_rate"
GUEST_TOTAL_PREFIX = "namespace_name_node:guestload_guest_cpu_seconds:rate"
GUEST_BUSY_PREFIX = "namespace_name_node:guestload_guest_cpu_busy:ratio_rate"
GUEST_IOWAIT_PREFIX = "namespace_name_node:guestload_guest_cpu_iowait:ratio_rate"
GUEST_STEAL_PREFIX = "namespace_name_node:guestload_guest_cpu_steal:ratio_rate"
HOST_BUSY_PREFIX = "namespace_name_node:kubevirt_vmi_vcpu_busy:ratio_rate"
CPU_BUSY_PREFIX = "namespace_name_node:vmi_cpu_busy:ratio_rate"
CONTENTION_PREFIX = "namespace_name_node:vmi_cpu_contention:ratio_rate"
CAUSE_BUSY = "namespace_name_node:guestload_cause_busy:ratio"
CAUSE_IOWAIT = "namespace_name_node:guestload_cause_iowait:ratio"
CAUSE_CONTENTION = "namespace_name_node:guestload_cause_contention:ratio"
PRESSURE_CAUSE = "namespace_name_node:guestload_pressure_cause:info"
LOAD_SEMANTICS = "namespace_name_node:guestload_guest_load_semantics:info"
"""What each VM's guest load counts (label ``semantics``): ``linux``, runnable and
uninterruptible tasks, vCPUs' running ones included; ``windows``, threads waiting for a CPU."""
LOAD_WARMING_UP = "namespace_name_node:guestload_guest_load_warming_up:info"
"""Windows VMs whose load series is younger than its warm-up: the agent's averages start at 0
on its first call and under-report until then."""
WINDOWS_OS_ID = "mswindows"
"""The operating system id the QEMU guest agent for Windows reports (guest-get-osinfo)."""
GUEST_OS_INFO = "guestload_guest_os_info"
CAUSES = ("cpu", "io", "blocked", "memory", "host", "unknown")
"""The values of the cause label of PRESSURE_CAUSE."""
UNKNOWN_REASONS = ("warming_up", "no_cpu_stats")
"""The values of the reason label of PRESSURE_CAUSE's ``unknown`` cause."""

GUEST_LAST_POLL = "guestload_guest_cpu_last_poll_ratio"
"""The guest's CPU shares over the exporter's last poll interval (label ``share``)."""
HOST_VCPU = "kubevirt_vmi_vcpu_seconds_total"
SWAP_IN_RATE_PREFIX = "namespace_name_node:guestload_memory_swap_in_bytes:rate"
MAJOR_FAULT_RATE_PREFIX = "namespace_name_node:guestload_memory_major_faults:rate"
SWAP_IN_COUNTERS = (
    "guestload_memory_swap_in_bytes_total",
    "kubevirt_vmi_memory_swap_in_traffic_bytes",
    "kubevirt_vmi_memory_swap_in_traffic_bytes_total",
)
"""Bytes read from the guest's swap: guestload's balloon stats, or KubeVirt's virt-handler's
(named ``..._total`` before KubeVirt 1.3)."""
MAJOR_FAULT_COUNTERS = (
    "guestload_memory_major_faults_total",
    "kubevirt_vmi_memory_pgmajfault_total",
    "kubevirt_vmi_memory_pgmajfault",
)
"""The guest's major page faults: guestload's balloon stats, or virt-handler's."""
MEMORY_LAST_POLL_SWAP_IN = "guestload_memory_last_poll_swap_in_bytes_per_second"
MEMORY_LAST_POLL_MAJOR_FAULTS = "guestload_memory_last_poll_major_faults_per_second"
"""The same over the guest's last statistics interval (guestload's balloon stats only)."""
SWAP_IN_LAST_POLL = f"namespace_name_node:{MEMORY_LAST_POLL_SWAP_IN}:max"
MAJOR_FAULTS_LAST_POLL = f"namespace_name_node:{MEMORY_LAST_POLL_MAJOR_FAULTS}:max"
"""Those per VM, recorded once for the memory condition's many readers."""

DISK = f"{VM}, device"
"""The labels that identify one disk of a VM."""
DISK_LAST_POLL_REQUESTS = "guestload_disk_last_poll_requests_per_second"
DISK_LAST_POLL_BYTES = "guestload_disk_last_poll_bytes_per_second"
DISK_REQUESTS = "namespace_name_node_device:guestload_disk_last_poll_requests_per_second:sum"
"""Each disk's requests per second over the exporter's last poll, reads and writes together."""
DISK_THROTTLE_CAPS = (
    (DISK_LAST_POLL_REQUESTS, "guestload_disk_throttle_iops", "iops"),
    (DISK_LAST_POLL_BYTES, "guestload_disk_throttle_bytes_per_second", "bytes"),
)
"""Each last-poll rate of a disk, the throttle cap that limits it, and the cap's kind."""

GUEST_CPU = "guestload_guest_cpu_seconds_total"
BUSY_MODES = "user|nice|system|irq|softirq"
"""Guest CPU modes that are guest work. Steal is the host's, idle and iowait are no work."""
COUNTED_TWICE = "guest|guestnice"
"""Modes Linux already counts inside user and nice; summing them too would count them twice."""

_VM_TEXT = "{{ $labels.namespace }}/{{ $labels.name }}"
_NODE_TEXT = "{{ $labels.node }}"
_VALUE_TEXT = '{{ $value | printf "%.2f" }}'


@dataclass(frozen=True, slots=True)
class RecordingRule:
    """A recording rule."""

    record: str
    expr: str

    def document(self) -> dict[str, object]:
        """The rule as it appears in a rule file."""
        return {"record": self.record, "expr": self.expr}


@dataclass(frozen=True, slots=True)
class AlertingRule:
    """An alerting rule with its severity and the three annotations every alert carries."""

    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook_url: str
    extra_labels: tuple[tuple[str, str], ...] = ()
    """Static labels besides severity, in the order they appear."""

    def document(self) -> dict[str, object]:
        """The rule as it appears in a rule file (`for` left out when it is zero)."""
        document: dict[str, object] = {"alert": self.alert, "expr": self.expr}
        if self.for_ != "0s":
            document["for"] = self.for_
        document["labels"] = {"severity": self.severity, **dict(self.extra_labels)}
        document["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": self.runbook_url,
        }
        return document


@dataclass(frozen=True, slots=True)
class RuleGroup:
    """A named group of rules, evaluated together."""

    name: str
    rules: Sequence[RecordingRule | AlertingRule]

    def document(self) -> dict[str, object]:
        """The group as it appears in a rule file."""
        return {"name": self.name, "rules": [rule.document() for rule in self.rules]}


def delay_ratio_record(settings: Settings) -> str:
    """The name of the vCPU delay ratio rule; its window comes from the settings."""
    return DELAY_RATIO_PREFIX + settings.window("vcpu_rate")


@dataclass(frozen=True, slots=True)
class Records:
    """The names of the window-dependent recording rules (the window is in each name)."""

    delay: str
    guest_total: str
    guest_busy: str
    guest_iowait: str
    guest_steal: str
    host_busy: str
    cpu_busy: str
    contention: str
    swap_in: str
    major_faults: str

    @classmethod
    def of(cls, settings: Settings) -> Records:
        """The names for the vCPU rate window of *settings*."""
        window = settings.window("vcpu_rate")
        return cls(
            delay=DELAY_RATIO_PREFIX + window,
            guest_total=GUEST_TOTAL_PREFIX + window,
            guest_busy=GUEST_BUSY_PREFIX + window,
            guest_iowait=GUEST_IOWAIT_PREFIX + window,
            guest_steal=GUEST_STEAL_PREFIX + window,
            host_busy=HOST_BUSY_PREFIX + window,
            cpu_busy=CPU_BUSY_PREFIX + window,
            contention=CONTENTION_PREFIX + window,
            swap_in=SWAP_IN_RATE_PREFIX + window,
            major_faults=MAJOR_FAULT_RATE_PREFIX + window,
        )


def _vm_query(record: str, found: str, missing: str, *, matchers: str = "") -> str:
    """A template printing *found* with the alerting VM's *record* (and *matchers*, e.g.
    ``, semantics='windows'``) in `.`, else *missing*."""
    return (
        f"{{{{ with printf \"{record}{{namespace='%s', name='%s', node='%s'{matchers}}}\" "
        "$labels.namespace $labels.name $labels.node | query }}"
        f"{found}{{{{ else }}}}{missing}{{{{ end }}}}"
    )


_SHARE = '{{ . | first | value | printf "%.2f" }}'


def disk_throttle_use(matchers: str, *, quote: str = '"') -> str:
    """Each capped disk's use of its tightest throttle cap over the exporter's last poll (1 = at
    the cap), for the disks *matchers* select, on one line; *quote* delimits its strings.

    The rate and the cap per op (total, read, write), the largest share over requests and
    bytes; a disk without a cap has no use series. Not recorded: it reads every disk's rates
    twice, and only GuestIOStall's text and one panel read it, each for a few VMs."""

    def field(value: str) -> str:
        return f"{quote}{value}{quote}"

    def labelled(expr: str, label: str, value: str) -> str:
        return f"label_replace({expr}, {field(label)}, {field(value)}, {field('')}, {field('')})"

    uses = []
    for family, cap, kind in DISK_THROTTLE_CAPS:
        per_op = f"max by ({DISK}, op) ({family}{{{matchers}}})"
        with_total = f"({per_op} or {labelled(f'sum by ({DISK}) ({per_op})', 'op', 'total')})"
        # The kind label keeps the two divisions apart: or would drop the bytes one's series
        # for a disk and op the requests one already has.
        share = f"{with_total} / on ({DISK}, op) max by ({DISK}, op) ({cap}{{{matchers}}} > 0)"
        uses.append(labelled(share, "kind", kind))
    return f"max by ({DISK}) ({' or '.join(uses)})"


def disks_text(settings: Settings) -> str:
    """The sentence naming the alerting VM's disks: each one's requests over the exporter's
    last poll and whether it runs at its throttle cap."""
    at_cap = float(settings.cause("throttle_use_share"))  # ge compares floats with floats
    vm = "{namespace='%s', name='%s', node='%s'}"
    vm_args = "$labels.namespace $labels.name $labels.node"
    disk = "namespace='%[1]s', name='%[2]s', node='%[3]s', device='%[4]s'"
    throttle_use = disk_throttle_use(disk, quote="'")
    use = (
        f'{{{{ with printf "{throttle_use}" {vm_args} '
        ".Labels.device | query }}"
        f"{{{{ if ge (. | first | value) {at_cap} }}}}, at its throttle cap{{{{ else }}}}, "
        "below its throttle cap{{ end }} ("
        "{{ . | first | value | humanizePercentage }} of its tightest cap)"
        "{{ else }}, no throttle cap{{ end }}"
    )
    return (
        "Disks (host view, the exporter's last poll): "
        f'{{{{ range printf "{DISK_REQUESTS}{vm}" {vm_args} | query | sortByLabel '
        '"device" }}'
        '{{ .Labels.device }} {{ .Value | printf "%.1f" }} requests/s'
        f"{use}; "
        "{{ else }}none reported; {{ end }}"
    )


def _windows_text(found: str, missing: str) -> str:
    """A template printing *found* for a VM with Windows load semantics, else *missing*."""
    return _vm_query(LOAD_SEMANTICS, found, missing, matchers=", semantics='windows'")


def queue_text(settings: Settings, busy_share: str) -> str:
    """What the queue alerts' value counts, by the VM's load semantics, and their evidence."""
    warm_up = settings.window("windows_load_warm_up")
    warming = _vm_query(
        LOAD_WARMING_UP,
        f" It is still warming up: the agent's average starts at 0 and under-reports for its "
        f"first {warm_up}.",
        "",
    )
    return _windows_text(
        "a Windows guest, whose agent reports the threads ready to run and waiting for a CPU "
        "(its Processor Queue Length, 1-minute average), running threads and I/O waits "
        f"excluded: the queue itself is the evidence.{warming}",
        "runnable tasks beyond its vCPUs (1-minute guest load minus vCPU count), while its "
        f"vCPUs are busy (CPU busy share at least {busy_share}).",
    )


def saturation_text(settings: Settings, busy_share: str, window: str) -> str:
    """What GuestVCPUSaturation's evidence is, by the VM's load semantics."""
    del settings
    return _windows_text(
        "counting only threads waiting for a CPU (a Windows guest's Processor Queue Length)",
        f"with its vCPUs busy (CPU busy share at least {busy_share} over {window})",
    )


def breakdown(settings: Settings) -> str:
    """The sentence every guest alert ends with: the evidence the causes are named from."""
    busy = _vm_query(CAUSE_BUSY, f'{_SHARE} ({{{{ . | first | label "source" }}}} view)', "unknown")
    iowait = _vm_query(CAUSE_IOWAIT, _SHARE, "unknown (no guest CPU statistics)")
    contention = _vm_query(CAUSE_CONTENTION, _SHARE, "unknown")
    return (
        "Breakdown (the guest's last poll, else over "
        f"{settings.window('vcpu_rate')}): CPU busy {busy}, iowait {iowait}, host contention "
        f"{contention}."
    )


def build_groups(settings: Settings) -> tuple[RuleGroup, ...]:
    """Every rule group of the bundle."""
    return (
        RuleGroup(name="guestload.recording", rules=_recording_rules(settings)),
        RuleGroup(name="guestload.guest.alerts", rules=_guest_alerts(settings)),
        RuleGroup(name="guestload.exporter.alerts", rules=_exporter_alerts(settings)),
    )


def render_rule_file(groups: Sequence[RuleGroup]) -> str:
    """The plain Prometheus rule file holding *groups*."""
    return dump_yaml(
        {"groups": [group.document() for group in groups]},
        header=(
            "Generated by `python -m monitoring.generate` from monitoring/config.yml: edit that\n"
            "file (thresholds) or monitoring/rules.py (expressions), never this one."
        ),
    )


def alerting_rules(groups: Sequence[RuleGroup]) -> list[AlertingRule]:
    """The alerting rules of *groups*, in file order."""
    return [rule for group in groups for rule in group.rules if isinstance(rule, AlertingRule)]


def _recording_rules(settings: Settings) -> list[RecordingRule]:
    window = settings.window("vcpu_rate")
    return [
        # Distinct vCPU ids, so that a vCPU exported by two jobs (guestload and KubeVirt's
        # virt-handler) or seen in two states during a scrape counts once. Offline vCPUs
        # (hot-unplugged; KubeVirt writes the state in upper case) run no task.
        RecordingRule(
            record=VCPU_COUNT,
            expr=(
                f"count by ({VM}) (\n"
                f"  count by ({VM}, id) (\n"
                '    kubevirt_vmi_vcpu_seconds_total{state!~"(?i)offline"}\n'
                "  )\n"
                ")"
            ),
        ),
        *_load_semantics_rules(settings),
        # max by drops job/instance/pod and merges a VM's load exported by two jobs, and
        # on (...) matches the VM however many target labels the scrape added. A Linux load
        # counts the tasks its vCPUs run: the queue is what exceeds them. Windows' agent
        # reports the threads waiting for a CPU, running ones excluded: that is the queue.
        RecordingRule(
            record=VCPU_QUEUE,
            expr=(
                "clamp_min(\n"
                f"    max by ({VM}) (kubevirt_vmi_guest_load_1m)\n"
                f"  - on ({VM})\n"
                f"    {VCPU_COUNT},\n"
                "  0\n"
                ")\n"
                f"  unless on ({VM})\n"
                f"{_is_windows()}\n"
                "or\n"
                f"max by ({VM}) (kubevirt_vmi_guest_load_1m)\n"
                f"  and on ({VM})\n"
                f"{_is_windows()}"
            ),
        ),
        RecordingRule(
            record=LOAD_PER_VCPU,
            expr=(f"max by ({VM}) (kubevirt_vmi_guest_load_5m)\n  / on ({VM})\n{VCPU_COUNT}"),
        ),
        # Share of wall time a vCPU was runnable but waited for a host CPU (the guest sees it
        # as steal time), averaged over the VM's vCPUs; max by dedups two exporting jobs.
        RecordingRule(
            record=delay_ratio_record(settings),
            expr=(
                f"avg by ({VM}) (\n"
                f"  max by ({VM}, id) (\n"
                f"    rate(kubevirt_vmi_vcpu_delay_seconds_total[{window}])\n"
                "  )\n"
                ")"
            ),
        ),
        *_cpu_share_rules(settings),
        *_cause_evidence_rules(settings),
        _cause_rule(settings),
        *_disk_rules(),
    ]


def _disk_rules() -> list[RecordingRule]:
    """Each disk's requests over the exporter's last poll, reads and writes together."""
    return [
        RecordingRule(
            record=DISK_REQUESTS,
            expr=f"sum by ({DISK}) (\n  max by ({DISK}, op) ({DISK_LAST_POLL_REQUESTS})\n)",
        ),
    ]


def _is_windows() -> str:
    """The VMs whose load has Windows' semantics."""
    return f'{LOAD_SEMANTICS}{{semantics="windows"}}'


def _load_semantics_rules(settings: Settings) -> list[RecordingRule]:
    """Which semantics each VM's load has, from the guest OS its agent reports, and which
    Windows VMs' load is still warming up."""
    windows = f'group by ({VM}) ({GUEST_OS_INFO}{{id="{WINDOWS_OS_ID}"}})'
    loaded = f"group by ({VM}) (kubevirt_vmi_guest_load_1m)"
    warm_up = settings.window("windows_load_warm_up")
    return [
        # Linux unless the agent says Windows: a VM whose OS is not known yet (the first poll,
        # --no-collector.guest-os) keeps the semantics of every agent before QEMU 10.1.
        RecordingRule(
            record=LOAD_SEMANTICS,
            expr=(
                "label_replace(\n"
                f"  {loaded}\n    and on ({VM})\n  {windows},\n"
                '  "semantics", "windows", "", ""\n'
                ")\n"
                "or\n"
                "label_replace(\n"
                f"  {loaded}\n    unless on ({VM})\n  {windows},\n"
                '  "semantics", "linux", "", ""\n'
                ")"
            ),
        ),
        # Warm once the load series existed a warm-up ago (within the lookback before that).
        RecordingRule(
            record=LOAD_WARMING_UP,
            expr=(
                f"group by ({VM}) ({_is_windows()})\n"
                f"  unless on ({VM})\n"
                f"group by ({VM}) (kubevirt_vmi_guest_load_1m offset {warm_up})"
            ),
        ),
    ]


def _guest_total(window: str) -> str:
    """The guest's CPU seconds per second over all modes, guest time not counted twice."""
    return f'sum by ({VM}) (\n  rate({GUEST_CPU}{{mode!~"{COUNTED_TWICE}"}}[{window}])\n)'


def _guest_share(modes: str, window: str, total: str) -> str:
    """The share of the guest's CPU time spent in *modes* (a label matcher) of *total*.

    No share while the total has not moved (0 / 0): a recorded NaN would be skipped by
    MetricsQL, which then reads the previous share instead, where PromQL reads the NaN.
    """
    return (
        f"sum by ({VM}) (\n"
        f"  rate({GUEST_CPU}{{mode{modes}}}[{window}])\n"
        ")\n"
        f"  / on ({VM})\n"
        f"({total} > 0)"
    )


def _cpu_share_rules(settings: Settings) -> list[RecordingRule]:
    window = settings.window("vcpu_rate")
    records = Records.of(settings)
    return [
        # From the guest's own CPU statistics (guest-get-cpustats), summed over its CPUs. The
        # total leaves out guest and guestnice, which Linux already counts in user and nice.
        # Busy leaves out steal: time the host ran something else is host contention, and
        # counting it as busy would call a starved guest CPU-bound.
        # The total is recorded once for the three shares: its rate over every mode's counter
        # was the costliest part of each share rule (bench.cluster at 10,000 VMs).
        RecordingRule(record=records.guest_total, expr=_guest_total(window)),
        RecordingRule(
            record=records.guest_busy,
            expr=_guest_share(f'=~"{BUSY_MODES}"', window, records.guest_total),
        ),
        RecordingRule(
            record=records.guest_iowait,
            expr=_guest_share('="iowait"', window, records.guest_total),
        ),
        RecordingRule(
            record=records.guest_steal,
            expr=_guest_share('="steal"', window, records.guest_total),
        ),
        # From the host: the vCPU threads' run time per online vCPU, for guests without CPU
        # statistics (Windows, an old or blocked agent). A vCPU's counter moves to a new
        # series when its state label changes, so the states are summed per job; max by
        # then keeps one job's copy when guestload and virt-handler both export it. Only
        # for VMs with vCPU samples a window ago: over a younger series rate() does not
        # extrapolate back before the first sample, and a busy new VM would look idle.
        RecordingRule(
            record=records.host_busy,
            expr=(
                "(\n"
                f"  sum by ({VM}) (\n"
                f"    max by ({VM}, id) (\n"
                "      sum without (state) (\n"
                f"        rate(kubevirt_vmi_vcpu_seconds_total[{window}])\n"
                "      )\n"
                "    )\n"
                "  )\n"
                f"    / on ({VM})\n"
                f"  {VCPU_COUNT}\n"
                ")\n"
                f"  and on ({VM})\n"
                f"group by ({VM}) (kubevirt_vmi_vcpu_seconds_total offset {window})"
            ),
        ),
        # One busy share per VM: the guest's view where it has one, else the host's; the
        # source label says which. ">= 0" drops a guest share that is not a number, so the
        # host's is used. "unless" rather than "or on": over a range MetricsQL's "or on"
        # fills the guest series' gaps with the host's values under the guest's labels.
        RecordingRule(
            record=records.cpu_busy,
            expr=(
                f'label_replace({records.guest_busy} >= 0, "source", "guest", "", "")\n'
                "  or\n"
                "label_replace(\n"
                f"  {records.host_busy}\n"
                f"    unless on ({VM})\n"
                f"  {records.guest_busy} >= 0,\n"
                '  "source", "host", "", ""\n'
                ")"
            ),
        ),
        # Host contention seen from both sides: the vCPU delay (host) and the steal time
        # (guest) measure the same wait; the larger one counts. One selector of both names
        # (their series differ by name, so neither hides the other) rather than an "or" of
        # two label_replace calls: one pass, no relabelled copies (bench.cluster).
        RecordingRule(
            record=records.contention,
            expr=f'max by ({VM}) ({{__name__=~"{records.delay}|{records.guest_steal}"}})',
        ),
    ]


def _cause_evidence_rules(settings: Settings) -> list[RecordingRule]:
    """The busy and iowait shares the causes are named from: the freshest view there is."""
    records = Records.of(settings)
    last_busy = f'max by ({VM}) ({GUEST_LAST_POLL}{{share="busy"}}) >= 0'
    last_iowait = f'max by ({VM}) ({GUEST_LAST_POLL}{{share="iowait"}}) >= 0'
    window = settings.window("vcpu_rate")
    return [
        # Memory pressure from the balloon's statistics (the guest's /proc/vmstat, refreshed
        # every balloon stats period): bytes read back from swap and page faults that had to
        # read a disk. From guestload or from KubeVirt's virt-handler, whichever exports
        # them; max by keeps one where both do.
        RecordingRule(record=records.swap_in, expr=_max_rate(SWAP_IN_COUNTERS, window)),
        RecordingRule(record=records.major_faults, expr=_max_rate(MAJOR_FAULT_COUNTERS, window)),
        # The same over the guest's last statistics interval: a storm at its first poll.
        RecordingRule(record=SWAP_IN_LAST_POLL, expr=f"max by ({VM}) ({MEMORY_LAST_POLL_SWAP_IN})"),
        RecordingRule(
            record=MAJOR_FAULTS_LAST_POLL, expr=f"max by ({VM}) ({MEMORY_LAST_POLL_MAJOR_FAULTS})"
        ),
        # The guest's busy share over the exporter's last poll interval: exact whatever the
        # interval, and current within one poll, so a guest that has just become CPU-bound
        # is named cpu at the poll its queue passes the threshold. Where it is missing (the
        # first poll, an exporter without it) the rate-window share stands in, the guest's
        # where it has one, else the host's vCPU run time (the source label says which).
        # The window label keeps the two sides' label sets apart: over a range, MetricsQL
        # returns two series where the sides of "or" share one, one for each side's span.
        RecordingRule(
            record=CAUSE_BUSY,
            expr=(
                "label_replace(\n"
                f'  label_replace({last_busy}, "source", "guest", "", ""),\n'
                '  "window", "last_poll", "", ""\n'
                ")\n"
                "  or\n"
                f"(\n  {records.cpu_busy}\n    unless on ({VM})\n  {last_busy}\n)"
            ),
        ),
        # Contention: the larger of the rate-window share (vCPU delay, guest steal) and the
        # guest's steal over the last poll, so a host that has just begun to starve a guest
        # is named at once and its idle-looking vCPUs are never called blocked. One selector
        # of both names, as for the contention share: share=~"|steal" keeps the record
        # (which has no share label) and the last poll's steal share.
        RecordingRule(
            record=CAUSE_CONTENTION,
            expr=(
                f"max by ({VM}) (\n"
                f'  {{__name__=~"{records.contention}|{GUEST_LAST_POLL}", share=~"|steal"}}\n'
                ")"
            ),
        ),
        RecordingRule(
            record=CAUSE_IOWAIT,
            expr=(
                f'label_replace({last_iowait}, "window", "last_poll", "", "")\n'
                "  or\n"
                f"(\n  {records.guest_iowait}\n    unless on ({VM})\n  {last_iowait}\n)"
            ),
        ),
    ]


def _max_rate(counters: Sequence[str], window: str) -> str:
    """The largest per-VM rate of whichever of *counters* exist. One rate per name: a name
    regex would drop the names and clash where one target exports two of them."""
    rates = "\n    or\n".join(f"  rate({counter}[{window}])" for counter in counters)
    return f"max by ({VM}) (\n{rates}\n)"


def memory_condition(settings: Settings, *, indent: str = "") -> str:
    """The VMs whose guest thrashes: swap read back, or major page faults, above their
    thresholds over the rate window or over the guest's last statistics interval (which
    names a storm at its first poll, where the window's rate lags a minute or more)."""
    records = Records.of(settings)
    swap_in = settings.cause("swap_in_bytes_per_second")
    faults = settings.cause("major_faults_per_second")
    lines = [
        "(",
        f"  {records.swap_in} > {swap_in}",
        "    or",
        f"  {SWAP_IN_LAST_POLL} > {swap_in}",
        "    or",
        f"  {records.major_faults} > {faults}",
        "    or",
        f"  {MAJOR_FAULTS_LAST_POLL} > {faults}",
        ")",
    ]
    return f"\n{indent}".join(lines)


def cause_conditions(settings: Settings) -> dict[str, str]:
    """Each cause's condition on a VM, queue aside: the VMs for which that cause holds.

    Memory comes first: vCPUs busy reclaiming and swapping, or idle waiting for swap reads,
    are short of memory, not of vCPUs or disk, so cpu, io and blocked stand down for it.
    """
    busy = settings.cause("busy_share")
    iowait = settings.cause("iowait_share")
    contention = f"{CAUSE_CONTENTION} > {settings.cause('contention_share')}"
    memory = memory_condition(settings, indent=" " * 4)
    not_memory = f"\n      unless on ({VM})\n    {memory}"
    not_windows = f"\n      unless on ({VM})\n    {_is_windows()}"
    return {
        # Busy vCPUs; on Windows the load itself, which counts only threads waiting for a CPU.
        "cpu": f"(\n      {CAUSE_BUSY} >= {busy}\n        or\n      {_is_windows()}\n    )"
        f"{not_memory}",
        # Idle vCPUs with iowait, or with no iowait known (the host's view cannot tell).
        "io": (
            f"(\n      {CAUSE_BUSY} < {busy}\n        unless on ({VM})\n"
            f"      {CAUSE_IOWAIT} < {iowait}\n    )"
            f"{not_memory}{not_windows}"
        ),
        # Idle vCPUs without iowait and without a host that starves them: tasks asleep in
        # uninterruptible waits that are not block I/O (NFS, FUSE, locks).
        "blocked": (
            f"(\n      {CAUSE_BUSY} < {busy}\n        and on ({VM})\n"
            f"      {CAUSE_IOWAIT} < {iowait}\n    )\n      unless on ({VM})\n"
            f"    {contention}{not_memory}{not_windows}"
        ),
        "memory": memory,
        "host": contention,
    }


def _cause_rule(settings: Settings) -> RecordingRule:
    """One series per cause that holds for a VM whose queue is high; several when mixed, and
    ``unknown`` with its reason where no busy share exists yet."""
    queue = settings.alert("GuestVCPUQueueHighWarning").threshold("queue")
    high = f"{VCPU_QUEUE} > {queue}"
    # The queue is tested once, after the causes are joined by "or" (their cause labels keep
    # them apart), not in each cause: four reads of the queue fewer (bench.cluster).
    parts = [
        "label_replace(\n"
        f"  group by ({VM}) (\n"
        f"    {condition}\n"
        "  ),\n"
        f'  "cause", "{cause}", "", ""\n'
        ")"
        for cause, condition in cause_conditions(settings).items()
    ]
    # Every Linux VM with a queue has vCPU samples (the queue subtracts their count), so a
    # busy share comes once they span the rate window: until then the cause is not known
    # yet. A Windows VM's queue needs no busy share: it is made of threads waiting for a CPU.
    unknown = (
        "label_replace(\n"
        "  label_replace(\n"
        f"    group by ({VM}) (\n"
        f"      {high}\n"
        f"        unless on ({VM})\n"
        f"      {CAUSE_BUSY}\n"
        f"        unless on ({VM})\n"
        f"      {memory_condition(settings, indent=' ' * 6)}\n"
        f"        unless on ({VM})\n"
        f"      {_is_windows()}\n"
        "    ),\n"
        '    "cause", "unknown", "", ""\n'
        "  ),\n"
        '  "reason", "warming_up", "", ""\n'
        ")"
    )
    causes = "\nor\n".join([*parts, unknown])
    return RecordingRule(record=PRESSURE_CAUSE, expr=f"(\n{causes}\n)\n  and on ({VM})\n{high}")


def _cause_is(cause: str) -> str:
    return f'{PRESSURE_CAUSE}{{cause="{cause}"}}'


def _guest_alerts(settings: Settings) -> list[AlertingRule]:
    warning = settings.alert("GuestVCPUQueueHighWarning")
    critical = settings.alert("GuestVCPUQueueHighCritical")
    stall = settings.alert("GuestIOStall")
    blocked = settings.alert("GuestBlockedTasks")
    thrash = settings.alert("GuestMemoryThrash")
    saturation = settings.alert("GuestVCPUSaturation")
    contention = settings.alert("GuestVCPUHostContention")
    window = settings.window("vcpu_rate")
    busy_share = settings.cause("busy_share")
    iowait_share = settings.cause("iowait_share")
    explain = breakdown(settings)
    records = Records.of(settings)
    alerts = []
    for name, level in (
        ("GuestVCPUQueueHighWarning", warning),
        ("GuestVCPUQueueHighCritical", critical),
    ):
        queue = level.threshold("queue")
        alerts.append(
            AlertingRule(
                alert=name,
                # Only a CPU queue: vCPUs busy running guest work. A queue on idle vCPUs
                # (blocked tasks, an I/O stall) or of unknown cause never advises more vCPUs.
                # The cause cpu's condition itself rather than its series: a series that
                # ends lingers for a lookback where no staleness marker ends it (a store
                # that receives the rules' results by remote write), and so would the page.
                expr=(
                    f"{VCPU_QUEUE} > {queue}\n  and on ({VM})\n"
                    f"(\n  {CAUSE_BUSY} >= {busy_share}\n    or\n  {_is_windows()}\n)\n"
                    f"  unless on ({VM})\n{memory_condition(settings)}"
                ),
                for_=level.for_.value,
                severity=level.severity,
                summary=f"Guest run-queue of {_VM_TEXT} is above {queue}.",
                description=(
                    f"VM {_VM_TEXT} on node {_NODE_TEXT} has {_VALUE_TEXT} tasks waiting for "
                    f"a vCPU, above the {level.severity} threshold of {queue}: "
                    f"{queue_text(settings, busy_share)} {explain}"
                ),
                runbook_url=settings.runbook_url(name),
            )
        )
    alerts.append(
        AlertingRule(
            alert="GuestIOStall",
            expr=f"{VCPU_QUEUE}\n  and on ({VM})\n{_cause_is('io')}",
            for_=stall.for_.value,
            severity=stall.severity,
            summary=f"Guest {_VM_TEXT} is stalled on I/O, not short of CPU.",
            description=(
                f"VM {_VM_TEXT} on node {_NODE_TEXT} has had {_VALUE_TEXT} tasks beyond its "
                f"vCPUs in its 1-minute load for {stall.for_.value} while its vCPUs were "
                f"mostly idle (CPU busy share below {busy_share}; iowait share at least "
                f"{iowait_share} where the guest reports it): the tasks are blocked on I/O, "
                f"and more vCPUs would not help. {disks_text(settings)}{explain}"
            ),
            runbook_url=settings.runbook_url("GuestIOStall"),
        )
    )
    alerts.append(
        AlertingRule(
            alert="GuestBlockedTasks",
            expr=f"{VCPU_QUEUE}\n  and on ({VM})\n{_cause_is('blocked')}",
            for_=blocked.for_.value,
            severity=blocked.severity,
            summary=(
                f"Guest {_VM_TEXT} has tasks stuck in uninterruptible sleep, not waiting "
                "for a CPU or a disk."
            ),
            description=(
                f"VM {_VM_TEXT} on node {_NODE_TEXT} has had {_VALUE_TEXT} tasks beyond its "
                f"vCPUs in its 1-minute load for {blocked.for_.value} while its vCPUs were "
                f"idle without iowait (CPU busy share below {busy_share}, iowait share below "
                f"{iowait_share}) and the host gave them their time: the tasks sleep in "
                "uninterruptible waits that are not block I/O, such as a network file system "
                "whose server does not answer, a FUSE daemon that hangs, or a kernel lock. "
                f"More vCPUs or a faster disk would not help. {explain}"
            ),
            runbook_url=settings.runbook_url("GuestBlockedTasks"),
        )
    )
    swap_in = settings.cause("swap_in_bytes_per_second")
    faults = settings.cause("major_faults_per_second")
    swap_in_now = _vm_query(records.swap_in, "{{ . | first | value | humanize1024 }}B/s", "unknown")
    faults_now = _vm_query(
        records.major_faults, '{{ . | first | value | printf "%.0f" }}/s', "unknown"
    )
    swap_in_last = _vm_query(
        SWAP_IN_LAST_POLL, "{{ . | first | value | humanize1024 }}B/s", "unknown"
    )
    faults_last = _vm_query(
        MAJOR_FAULTS_LAST_POLL, '{{ . | first | value | printf "%.0f" }}/s', "unknown"
    )
    alerts.append(
        AlertingRule(
            alert="GuestMemoryThrash",
            # Not tied to a long queue: one process thrashing slows the whole guest. One
            # series per VM whichever term holds: a term keeps its series' name in PromQL, and
            # vmalert would restart the `for` when the term that holds changes.
            expr=f"group by ({VM}) {memory_condition(settings)}",
            for_=thrash.for_.value,
            severity=thrash.severity,
            summary=f"Guest {_VM_TEXT} thrashes: it is short of memory, not of vCPUs.",
            description=(
                f"VM {_VM_TEXT} on node {_NODE_TEXT} has read its memory back from swap at "
                f"{swap_in_now} (threshold {swap_in} B/s) or taken {faults_now} major page "
                f"faults (threshold {faults}/s), {window} rates ({swap_in_last} and "
                f"{faults_last} over the guest's last statistics interval), for "
                f"{thrash.for_.value}: its "
                "working set does not fit its memory, and its vCPUs spend their time "
                "reclaiming and waiting for pages. More vCPUs would not help; more memory, "
                f"or less work in it, would. {explain}"
            ),
            runbook_url=settings.runbook_url("GuestMemoryThrash"),
        )
    )
    per_vcpu = saturation.threshold("load_per_vcpu")
    alerts.append(
        AlertingRule(
            alert="GuestVCPUSaturation",
            # Only with busy vCPUs: the same load made of blocked tasks is no lack of vCPUs.
            expr=(
                f"{LOAD_PER_VCPU} > {per_vcpu}\n  and on ({VM})\n"
                f"(\n  {records.cpu_busy} >= {busy_share}\n    or\n  {_is_windows()}\n)\n"
                f"  unless on ({VM})\n{memory_condition(settings)}"
            ),
            for_=saturation.for_.value,
            severity=saturation.severity,
            summary=f"Guest {_VM_TEXT} has more than {per_vcpu} runnable tasks per vCPU.",
            description=(
                f"VM {_VM_TEXT} on node {_NODE_TEXT} has had a 5-minute guest load of "
                f"{_VALUE_TEXT} per vCPU for {saturation.for_.value}, above {per_vcpu}, "
                f"{saturation_text(settings, busy_share, window)}: its workload needs more "
                f"vCPUs than it has. {explain}"
            ),
            runbook_url=settings.runbook_url("GuestVCPUSaturation"),
        )
    )
    delay = contention.threshold("delay_ratio")
    busy = contention.threshold("load_per_vcpu")
    alerts.append(
        AlertingRule(
            alert="GuestVCPUHostContention",
            expr=(
                f"{delay_ratio_record(settings)} > {delay}\n"
                f"  and on ({VM})\n"
                f"{LOAD_PER_VCPU} >= {busy}"
            ),
            for_=contention.for_.value,
            severity=contention.severity,
            summary=f"vCPUs of {_VM_TEXT} wait for a CPU of host {_NODE_TEXT}.",
            description=(
                f"The vCPUs of VM {_VM_TEXT} spent a share of {_VALUE_TEXT} of their time "
                f"({window} rate) runnable but waiting for a CPU of node {_NODE_TEXT}, above "
                f"{delay}, for {contention.for_.value} while the guest had work to run: the "
                f"host is overcommitted, not the guest. {explain}"
            ),
            runbook_url=settings.runbook_url("GuestVCPUHostContention"),
        )
    )
    return alerts


def _exporter_alerts(settings: Settings) -> list[AlertingRule]:
    selector = settings.exporter_selector
    down = settings.alert("GuestloadExporterDown")
    libvirt = settings.alert("GuestloadLibvirtDown")
    socket = settings.alert("GuestloadLibvirtSocketDown")
    unavailable = settings.alert("GuestLoadUnavailable")
    return [
        AlertingRule(
            alert="GuestloadExporterDown",
            expr=f"up{{{selector}}} == 0",
            for_=down.for_.value,
            severity=down.severity,
            summary="The guestload exporter {{ $labels.instance }} cannot be scraped.",
            description=(
                "Prometheus has failed to scrape the guestload exporter {{ $labels.instance }} "
                f"(job {{{{ $labels.job }}}}) for {down.for_.value} (up = {_VALUE_TEXT}): guest "
                "load and vCPU series of the VMs on that host are missing."
            ),
            runbook_url=settings.runbook_url("GuestloadExporterDown"),
        ),
        AlertingRule(
            alert="GuestloadLibvirtDown",
            expr=f"guestload_libvirt_up{{{selector}}} == 0",
            for_=libvirt.for_.value,
            severity=libvirt.severity,
            summary="The guestload exporter {{ $labels.instance }} has no libvirt connection.",
            description=(
                "The guestload exporter {{ $labels.instance }} has not been connected to "
                f"libvirt for {libvirt.for_.value} (guestload_libvirt_up = {_VALUE_TEXT}): it "
                "exports no guest load or vCPU series for the VMs on that host."
            ),
            runbook_url=settings.runbook_url("GuestloadLibvirtDown"),
        ),
        # KubeVirt node mode: one daemon per virt-launcher pod; the series goes with the pod.
        AlertingRule(
            alert="GuestloadLibvirtSocketDown",
            expr=f"guestload_libvirt_socket_up{{{selector}}} == 0",
            for_=socket.for_.value,
            severity=socket.severity,
            # namespace and name stay empty until the daemon has listed its domain once.
            summary=(
                "The libvirt daemon of {{ with $labels.name }}VM {{ $labels.namespace }}/"
                "{{ . }}'s{{ else }}a{{ end }} virt-launcher pod does not answer."
            ),
            description=(
                "The guestload exporter {{ $labels.instance }} has had no answer for "
                f"{socket.for_.value} from the libvirt daemon behind socket "
                "{{ $labels.socket }} (pod UID {{ $labels.pod_uid }}"
                "{{ with $labels.name }}, last seen running VM {{ $labels.namespace }}/{{ . }}"
                "{{ else }}, which has not named its VM yet{{ end }}; "
                f"guestload_libvirt_socket_up = {_VALUE_TEXT}): it exports no guest load or "
                "vCPU series for that VM; the node's other VMs are not affected."
            ),
            runbook_url=settings.runbook_url("GuestloadLibvirtSocketDown"),
        ),
        # "unless" keeps quiet when another job (KubeVirt's virt-handler) has the VM's load.
        AlertingRule(
            alert="GuestLoadUnavailable",
            expr=(
                f'guestload_agent_state{{{selector}, query="load", state!="ok"}} == 1\n'
                f"  unless on ({VM})\n"
                "kubevirt_vmi_guest_load_1m"
            ),
            for_=unavailable.for_.value,
            severity=unavailable.severity,
            summary=f"Guest {_VM_TEXT} reports no load average.",
            description=(
                f"VM {_VM_TEXT} on node {_NODE_TEXT} has reported no guest load for "
                f"{unavailable.for_.value}: its guest agent state is {{{{ $labels.state }}}} "
                f"(guestload_agent_state = {_VALUE_TEXT})."
            ),
            runbook_url=settings.runbook_url("GuestLoadUnavailable"),
        ),
    ]
