"""The soak in small (500 churning VMs with flapping agents for 20 s) and the checks it uses.

The check is tested against expositions the exporter's own poller and renderer produce from
the simulated source, with a stale VM spliced in: it must name that VM and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.staleness import PopulationReplay, check_scrape, exported_vms

from bench import soak
from guestload.exposition.cache import MetricsCache
from guestload.exposition.schema import MetricSet
from guestload.identity import IdentityResolver
from guestload.model import Snapshot
from guestload.polling.poller import Poller
from guestload.simulation import AgentBehaviour, AgentFailures, Simulation
from guestload.sources.simulated import STEP_SECONDS, SimulatedSource
from tests.exposition import scraped
from tests.unit.fakes import LOAD_ONLY

NODE = soak.NODE
SIMULATION = Simulation(
    vms=40,
    seed=7,
    churn_per_minute=120,  # 10 VMs replaced per 5 s step
    agent_flaps_per_minute=36,  # 3 agents go away per step
    agent_failures=AgentFailures(absent=0.1, old=0.1),
)


def _expositions(simulation: Simulation, steps: list[int]) -> dict[int, str]:
    """What ``guestload serve`` would serve after a full poll at each of ``steps``."""
    now = [0.0]
    source = SimulatedSource(simulation=simulation, clock=lambda: now[0], churn_thread=False)
    cache = MetricsCache(metric_set=MetricSet(queries=LOAD_ONLY, vcpu_collector=True))
    snapshots: list[Snapshot] = []
    poller = Poller(
        source=source,
        queries=LOAD_ONLY,
        identity=IdentityResolver(node=NODE, default_namespace="libvirt"),
        poll_interval_seconds=STEP_SECONDS,
        agent_timeout_seconds=1.0,
        concurrency=2,
        agent_backoff_max_seconds=60.0,
        on_snapshot=snapshots.append,
        build_info={},
    )
    texts: dict[int, str] = {}
    try:
        for step in steps:
            now[0] = step * STEP_SECONDS
            poller.poll()
            cache.update(snapshots[-1])
            texts[step] = scraped(cache).decode()
    finally:
        poller.close()
    return texts


def _vm_lines(text: str, key: tuple[str, str]) -> list[str]:
    namespace, name = key
    return [
        line
        for line in text.splitlines()
        if f'name="{name}"' in line and f'namespace="{namespace}"' in line
    ]


def test_snapshots_of_the_simulation_check_clean_at_every_step() -> None:
    texts = _expositions(SIMULATION, [0, 1, 3])
    replay = PopulationReplay(simulation=SIMULATION, node=NODE)
    replay.advance_to(4)
    for step, text in texts.items():
        result = check_scrape(exported_vms(text), replay)
        assert result.vms == SIMULATION.vms
        assert result.newest_start_step == step
        assert result.violations == 0, result


def test_a_vm_exported_after_it_stopped_is_named_stale() -> None:
    texts = _expositions(SIMULATION, [0, 3])
    replay = PopulationReplay(simulation=SIMULATION, node=NODE)
    replay.advance_to(3)
    # Ten VMs are replaced per step; a few were new themselves, so fewer were there at step 0.
    gone = sorted(key for key in replay.stopped if replay.started[key] == 0)
    assert len(gone) >= 10
    victim = gone[0]
    spliced = _vm_lines(texts[0], victim)
    assert spliced
    text = texts[3] + "\n".join(spliced) + "\n"
    result = check_scrape(exported_vms(text), replay)
    assert result.stale_vms == (victim,)
    assert result.stale_series == len(spliced)
    assert result.violations == 1


def test_a_vm_the_source_never_had_is_stale_and_another_seed_is_all_stale() -> None:
    (text,) = _expositions(SIMULATION, [0]).values()
    replay = PopulationReplay(simulation=SIMULATION, node=NODE)
    invented = 'guestload_agent_state{name="vm-99999",namespace="prod",node="n",state="ok"} 1.0'
    result = check_scrape(exported_vms(text + invented + "\n"), replay)
    assert result.stale_vms == (("prod", "vm-99999"),)
    other = PopulationReplay(simulation=Simulation(vms=40, seed=8), node=NODE)
    assert len(check_scrape(exported_vms(text), other).stale_vms) == SIMULATION.vms


def test_a_load_series_from_an_agent_that_cannot_answer_is_caught() -> None:
    (text,) = _expositions(SIMULATION, [0]).values()
    replay = PopulationReplay(simulation=SIMULATION, node=NODE)
    silent = next(k for k, b in replay.behaviours.items() if b is AgentBehaviour.ABSENT)
    namespace, name = silent
    labels = f'name="{name}",namespace="{namespace}",node="{NODE}"'
    result = check_scrape(
        exported_vms(text + f"kubevirt_vmi_guest_load_1m{{{labels}}} 0.5\n"), replay
    )
    assert result.load_from_silent_agent == (silent,)
    assert result.load_without_ok == (silent,)  # its agent state is not_configured
    assert result.stale_vms == ()


def test_a_load_series_while_the_agent_is_away_is_caught_and_after_it_is_back_is_not() -> None:
    texts = _expositions(SIMULATION, [0, 3, 8])
    replay = PopulationReplay(simulation=SIMULATION, node=NODE)
    replay.advance_to(8)
    assert replay.flaps == 3 * 8
    away = [
        key
        for key, spells in replay.agent_away.items()
        if replay.away_throughout(key, 3, 3) and replay.exists(key, 8)
    ]
    assert away
    for key in away:  # the exporter itself dropped their load at once
        assert not [line for line in _vm_lines(texts[3], key) if "guest_load" in line]
    victim = away[0]
    (went, back), *_ = replay.agent_away[victim]
    assert went <= 3
    assert back is not None
    assert 3 < back <= 8
    loads = [line for line in _vm_lines(texts[0], victim) if "guest_load" in line]
    assert loads
    result = check_scrape(exported_vms(texts[3] + "\n".join(loads) + "\n"), replay, latest_step=3)
    assert result.load_while_agent_away == (victim,)
    assert result.load_without_ok == (victim,)  # its agent state is not_connected
    assert result.stale_vms == ()
    # Back by step 8: a load series again is fine, and a poll that may be older is not blamed.
    assert check_scrape(exported_vms(texts[8]), replay).violations == 0
    assert check_scrape(exported_vms(texts[8] + "\n".join(loads) + "\n"), replay).violations == 0


def test_labels_with_escapes_are_read_whole() -> None:
    name = 'a\\"b\\\\,c=\\"d'
    line = f'guestload_agent_state{{name="{name}",namespace="x",query="load",state="ok"}} 1.0\n'
    exported = exported_vms(line)
    assert exported.series == {("x", 'a\\"b\\\\,c=\\"d'): 1}
    assert exported.states == {("x", 'a\\"b\\\\,c=\\"d'): ("ok",)}


def test_soak_smoke_keeps_every_invariant_with_churn_and_flaps(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = ["--vms", "500", "--churn", "300", "--interval", "2s", "--minutes", str(20 / 60)]
    argv += ["--flaps", "120"]
    assert soak.main([*argv, "--warmup", "5s", "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["failed_invariants"] == []
    result = document["result"]
    assert result["exporter_alive_at_end"]
    assert result["polls"]["done"] >= 5
    assert result["polls"]["failures_total"] == 0
    assert result["scrapes"]["errors"] == 0
    assert result["scrapes"]["plain"] >= 5
    assert result["scrapes"]["gzip"] >= 5
    staleness = result["staleness"]
    assert staleness["scrapes_checked"] == result["scrapes"]["plain"] + result["scrapes"]["gzip"]
    assert staleness["stale_series"] == 0
    assert staleness["late_series_vms"] == 0
    # With 500 VMs polls fit in the interval, so stop events drop a VM within a second;
    # waiting for the next poll instead would leave some exported for up to the 2 s interval.
    assert staleness["longest_exported_after_stop_seconds"] < 1.0
    # The churn really happened and its new VMs really reached the scrapes.
    assert staleness["vms_stopped_during_run"] >= 25
    assert staleness["started_vms_seen_exported"] >= 25
    # The flaps happened too (10 per 5 s step) and were held against the load series.
    assert staleness["agent_flaps_during_run"] >= 25
    assert "load_while_agent_away" in staleness["invariant_violations"]
    assert not any(staleness["invariant_violations"].values())
    rss = result["rss"]
    assert 10 * 2**20 < rss["max_bytes"] < 150 * 2**20


def test_the_rss_trend_has_every_minute_and_the_slope_of_the_last_stretch() -> None:
    mib = 2**20
    # 70 minutes, a sample every 10 s: +1 MiB/min for 40 minutes, then flat.
    samples = [(t, 100 * mib + int(min(t, 2400.0) / 60 * mib)) for t in range(0, 4201, 10)]
    trend = soak._rss_trend([(float(t), r) for t, r in samples], warmup=60.0, tail=1800.0)
    assert len(trend["per_minute_median_bytes"]) == 70
    assert trend["per_minute_median_bytes"][0] < trend["per_minute_median_bytes"][39]
    assert trend["per_minute_median_bytes"][40] == trend["per_minute_median_bytes"][69]
    assert trend["tail_seconds"] == 1800.0
    assert abs(trend["tail_slope_bytes_per_minute"]) < 0.001 * mib
    assert 0.5 * mib < trend["slope_bytes_per_minute"] < 1.0 * mib
    short = soak._rss_trend([(float(t), r) for t, r in samples[:61]], warmup=60.0, tail=1800.0)
    assert short["tail_seconds"] == 540.0  # after warm-up only, when the run is shorter
    assert abs(short["tail_slope_bytes_per_minute"] - mib) < 0.01 * mib
