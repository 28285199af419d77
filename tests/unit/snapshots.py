"""The snapshot behind the golden exposition ``tests/unit/golden/metrics.prom``.

Two VMs on one node: one whose agent answered every query, whose balloon reports every
statistic and whose two disks report their requests (one of them capped), one with an odd name
whose agent answered only its OS (kernel fields alone) and whose balloon reports only its size;
vCPU statistics, poll counters and build information filled in.
"""

from __future__ import annotations

from guestload.exposition.cache import MetricsCache
from guestload.exposition.schema import MetricSet
from guestload.hoststats.balloon import BALLOON, BalloonStats
from guestload.hoststats.block import BLOCK, IOTUNE_PREFIX
from guestload.model import (
    AgentState,
    DomainSample,
    Identity,
    QueryReading,
    Snapshot,
    VcpuStat,
    VcpuState,
)
from guestload.queries.cpustats import CpuStatsQuery
from guestload.queries.load import LOAD, GuestLoad
from guestload.queries.osinfo import OSINFO, GuestOs
from tests.exposition import scraped


def sample_snapshot() -> Snapshot:
    node = "node-1"
    return Snapshot(
        source_up=True,
        domains=(
            DomainSample(
                uuid="u1",
                domain_name="prod_web-1",
                identity=Identity(namespace="prod", name="web-1", node=node),
                readings={
                    "load": QueryReading(
                        state=AgentState.OK, value=GuestLoad(one=2.5, five=1.25, fifteen=0.5)
                    ),
                    "cpustats": QueryReading(state=AgentState.OK, value=CPU_TIMES),
                    "osinfo": QueryReading(state=AgentState.OK, value=DEBIAN),
                },
                vcpu_count=2,
                vcpus=(
                    VcpuStat(0, VcpuState.RUNNING, 12.5, 0.25, 0.75),
                    VcpuStat(1, VcpuState.BLOCKED, 3.0, None, None),
                ),
                host_stats={
                    "balloon": BALLOON.fold(BALLOON_STATS_BEFORE, BALLOON_STATS, 120.0),
                    "block": DISKS,
                },
            ),
            DomainSample(
                uuid="u2",
                domain_name='odd "name"\\with\nnewline',
                identity=Identity(namespace="libvirt", name='odd "name"\\with\nnewline', node=node),
                readings={
                    "load": QueryReading(state=AgentState.UNSUPPORTED),
                    "cpustats": QueryReading(state=AgentState.NOT_CONNECTED),
                    "osinfo": QueryReading(state=AgentState.OK, value=KERNEL_ONLY),
                },
                vcpu_count=1,
                vcpus=(VcpuStat(0, VcpuState.OFFLINE, None, None, None),),
                host_stats={"balloon": BalloonStats(balloon_bytes=1024**3)},
            ),
        ),
        polls_total=3,
        poll_failures_total=1,
        last_poll_duration_seconds=0.125,
        last_success_timestamp_seconds=1_700_000_000.0,
        agent_calls_total={("load", AgentState.OK): 3, ("load", AgentState.UNSUPPORTED): 1},
        build_info={"python_version": "3.11.7", "load_method": "guest_info"},
    )


#: The first VM's OS: a Debian 12 guest, every label filled in but the variant.
DEBIAN = GuestOs(
    id="debian",
    version_id="12",
    pretty_name='Debian GNU/Linux 12 "bookworm"',
    kernel_release="6.1.0-28-cloud-amd64",
    machine="x86_64",
)
#: The second VM's OS: a guest without os-release, whose agent reports only its kernel.
KERNEL_ONLY = GuestOs(kernel_release="6.1.0-41-cloud-amd64", machine="x86_64")
#: Guest CPU times of the first VM, as the agent reported them in its last answer (ms).
CPU_TIMES = CpuStatsQuery().fold(
    None, {0: {"user": 1500, "system": 250, "idle": 90_000, "iowait": 4_970}, 1: {"user": 10}}
)
#: The first VM's balloon, with a statistics period: every statistic the balloon reports.
BALLOON_STATS = BALLOON.parse(
    {
        "balloon.current": 4 * 1024 * 1024,
        "balloon.maximum": 4 * 1024 * 1024,
        "balloon.swap_in": 2048,
        "balloon.swap_out": 4096,
        "balloon.major_fault": 310,
        "balloon.minor_fault": 1_234_567,
        "balloon.unused": 1024 * 1024,
        "balloon.available": 4_000_000,
        "balloon.usable": 2 * 1024 * 1024,
        "balloon.disk_caches": 512 * 1024,
        "balloon.last-update": 1_699_999_990,
        "balloon.rss": 3 * 1024 * 1024,
    }
)
#: Ten seconds of the guest's statistics earlier: 1 MiB swapped in since, 110 major faults.
BALLOON_STATS_BEFORE = BALLOON.parse(
    {
        "balloon.current": 4 * 1024 * 1024,
        "balloon.maximum": 4 * 1024 * 1024,
        "balloon.swap_in": 1024,
        "balloon.major_fault": 200,
        "balloon.last-update": 1_699_999_980,
    }
)
#: The first VM's disks: vda capped at 5 requests a second and 1 MiB/s of reads, vdb uncapped;
#: vda read 600 requests (2.4 MB) in the last poll interval of 120 s, vdb nothing.
DISKS_BEFORE = BLOCK.parse(
    {
        "block.count": 2,
        "block.0.name": "vda",
        "block.0.rd.reqs": 900,
        "block.0.rd.bytes": 900 * 4096,
        "block.0.wr.reqs": 12,
        "block.0.wr.bytes": 12 * 4096,
        "block.1.name": "vdb",
        "block.1.rd.reqs": 40,
        "block.1.rd.bytes": 40 * 65536,
    }
)
DISKS_NOW = BLOCK.parse(
    {
        "block.count": 2,
        "block.0.name": "vda",
        "block.0.rd.reqs": 1500,
        "block.0.rd.bytes": 1500 * 4096,
        "block.0.rd.times": 299_000_000_000,
        "block.0.wr.reqs": 12,
        "block.0.wr.bytes": 12 * 4096,
        "block.0.wr.times": 2_500_000_000,
        "block.0.fl.reqs": 3,
        "block.1.name": "vdb",
        "block.1.rd.reqs": 40,
        "block.1.rd.bytes": 40 * 65536,
        f"{IOTUNE_PREFIX}vda.total_iops_sec": 5,
        f"{IOTUNE_PREFIX}vda.read_bytes_sec": 1024 * 1024,
    }
)
DISKS = BLOCK.fold(DISKS_BEFORE, DISKS_NOW, 120.0)
QUERIES = (LOAD, CpuStatsQuery(), OSINFO)
HOST_STATS = (BALLOON, BLOCK)


def rendered(*, openmetrics: bool = False, vcpu: bool = True) -> bytes:
    cache = MetricsCache(
        metric_set=MetricSet(queries=QUERIES, vcpu_collector=vcpu, host_stats=HOST_STATS)
    )
    cache.update(sample_snapshot())
    return scraped(cache, openmetrics=openmetrics)
