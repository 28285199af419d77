"""A quick run of every benchmark command (tiny sizes, seconds each), so they cannot rot.

These check that each command runs end to end against its real peers and writes complete
results; they assert no timing targets (those are for ``docs/performance.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bench import (
    cluster,
    density,
    distributed,
    firstpoll,
    hostile,
    launchers,
    peer,
    poll,
    pollcycle,
    rulecost,
    scrape,
    threads,
)
from guestload_lab.services import PROJECT_RULE_FILE


def _results(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    assert document["machine"]["cpus"] >= 1
    return document


def test_scrape_compares_guestload_with_a_pushgateway_holding_the_same_samples(
    tmp_path: Path,
) -> None:
    out = tmp_path / "scrape.json"
    assert scrape.main(["--vms", "20", "--scrapes", "2", "--out", str(out)]) == 0
    (result,) = _results(out)["results"]
    assert result["vms"] == 20
    assert result["samples"] > 20 * 4  # three load gauges and an agent state per VM, and vCPUs
    for key in ("guestload_plain", "guestload_gzip", "pushgateway_plain", "pushgateway_gzip"):
        assert result["seconds"][key]["n"] == 2
        assert result["seconds"][key]["p50"] > 0
    assert result["body_bytes"]["guestload_gzip"] < result["body_bytes"]["guestload_plain"]
    for server in ("guestload", "pushgateway"):
        assert result["memory_bytes"][server]["rss"] > 0


def test_pollcycle_runs_the_poller_with_hung_agents(tmp_path: Path) -> None:
    out = tmp_path / "pollcycle.json"
    argv = ["--vms", "30", "--hung", "0,10", "--interval", "2s", "--agent-timeout", "400ms"]
    assert pollcycle.main([*argv, "--polls", "2", "--out", str(out)]) == 0
    healthy, with_hung = _results(out)["results"]
    assert healthy["final_states"] == {"ok": 30}
    assert with_hung["final_states"]["timeout"] == 30 - with_hung["healthy_vms"] > 0
    assert with_hung["final_states"]["ok"] == with_hung["healthy_vms"]
    for result in (healthy, with_hung):
        assert result["polls"] >= 2
        assert result["healthy_max_gap_seconds"] > 0
        assert result["healthy_never_answered"] == 0
        assert result["first_healthy_answer_seconds_p50"] > 0
        assert (
            result["first_healthy_answer_seconds_p50"] <= result["first_healthy_answer_seconds_max"]
        )


def test_firstpoll_reads_the_first_poll_of_each_size_and_the_start_up_log(
    tmp_path: Path,
) -> None:
    out = tmp_path / "firstpoll.json"
    assert firstpoll.main(["--vms", "20,40", "--rounds", "1", "--out", str(out)]) == 0
    result = _results(out)["result"]
    assert [r["polls_total"] for r in result["runs"]] == [1, 1]
    assert set(result["ratios_of_medians"]) == {"40/20"}
    assert all(size["median"] > 0 for size in result["sizes"].values())
    check = result["log_check"]
    assert check["per_vm_state_lines"] == 0
    (summary,) = check["summary_lines"]
    assert "domains=20 " in summary
    assert "load:ok=20" in summary


def test_density_measures_cpu_and_memory_of_a_serving_exporter(tmp_path: Path) -> None:
    out = tmp_path / "density.json"
    argv = ["--vms", "50", "--intervals", "2s", "--minutes", "0.1", "--scrape-interval", "2s"]
    assert density.main([*argv, "--out", str(out)]) == 0
    (result,) = _results(out)["results"]
    assert result["polls"] >= 2
    assert result["cpu_seconds"] >= 0
    assert result["rss_bytes"] > 10 * 2**20
    assert result["simulation_cpu_seconds_per_poll"] > 0


def test_cluster_runs_prometheus_with_the_project_rules(tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    argv = ["--vms", "40", "--instances", "2", "--interval", "2s", "--minutes", "0.1"]
    assert cluster.main([*argv, "--out", str(out)]) == 0
    result = _results(out)["result"]
    assert result["load_gauge_series"] == 3 * 40
    assert result["samples_appended_per_minute"] > 0
    assert result["head_series"] > 3 * 40
    assert result["prometheus_rss_bytes"] > 0
    assert "guestload.recording" in result["rule_group_seconds"]
    assert result["rule_seconds"]["kubevirt_vmi_guest_vcpu_queue"]["p50"] > 0
    assert result["compare_rule_seconds"] == {}
    assert result["rule_errors"] == {}


def test_cluster_compares_two_rule_files_with_one_rate(tmp_path: Path) -> None:
    """The shipped file against a copy of itself: both measured in one Prometheus, apart."""
    out = tmp_path / "cluster.json"
    copy = tmp_path / "copy.rules.yml"
    copy.write_text(PROJECT_RULE_FILE.read_text())
    argv = ["--vms", "40", "--instances", "2", "--interval", "2s", "--minutes", "0.15"]
    assert cluster.main([*argv, "--compare", str(copy), "--out", str(out)]) == 0
    result = _results(out)["result"]
    groups = result["rule_group_seconds"]
    for group in ("guestload.recording", "compare:guestload.recording", "bench.reference"):
        assert groups[group]["n"] >= 2, group
        assert groups[group]["p50"] > 0, group
    assert result["ratio_to_reference"]["bench.reference"] == 1.0
    assert result["ratio_to_reference"]["guestload.recording"] > 0
    assert result["ratio_to_inputs"]["bench.inputs"] == 1.0
    assert set(result["compare_rule_seconds"]) == set(result["rule_seconds"])
    assert result["rule_errors"] == {}


def test_a_compared_rule_file_records_and_reads_only_its_own_series(tmp_path: Path) -> None:
    source = tmp_path / "rules.yml"
    source.write_text(
        "groups:\n"
        "  - name: g\n"
        "    rules:\n"
        "      - record: a:b\n"
        "        expr: sum(x)\n"
        "      - record: a:b:c\n"
        "        expr: a:b * 2 + a:b:c_other + a:b:c\n"
        "      - alert: A\n"
        "        expr: a:b > 1\n"
    )
    document = yaml.safe_load(rulecost.renamed_rule_file(source, tmp_path / "out.yml").read_text())
    (group,) = document["groups"]
    assert group["name"] == "compare:g"
    assert [rule.get("record") for rule in group["rules"]] == ["compare:a:b", "compare:a:b:c", None]
    assert group["rules"][1]["expr"] == "compare:a:b * 2 + a:b:c_other + compare:a:b:c"
    assert group["rules"][2]["expr"] == "compare:a:b > 1"


def test_distributed_runs_sharded_vmagents_a_central_store_and_vmalert(tmp_path: Path) -> None:
    out = tmp_path / "distributed.json"
    argv = ["--vms", "40", "--instances", "2", "--shards", "2", "--interval", "2s"]
    argv += ["--minutes", "0.1", "--latency-offset", "1s"]
    assert distributed.main([*argv, "--out", str(out)]) == 0
    result = _results(out)["result"]
    assert result["load_gauge_series"] == 40
    assert result["targets_up"] == 2
    assert result["samples_ingested_per_second"] > 0
    assert result["rss_bytes"]["store"] > 0
    assert "kubevirt_vmi_guest_vcpu_queue" in result["rule_seconds"]
    assert set(result["group_seconds_p50"]) >= {"guestload.recording", "guestload.guest.alerts"}


def test_poll_compares_the_exporter_with_a_bare_libvirt_loop(tmp_path: Path) -> None:
    """Against libvirt's test driver (no VM, no agent): the real-VM run is too heavy here."""
    out = tmp_path / "poll.json"
    empty_node = tmp_path / "empty-node.xml"
    empty_node.write_text("<node/>\n")
    argv = ["--uri", "test:///default", "--empty-uri", f"test://{empty_node}"]
    argv += ["--interval", "1s", "--seconds", "2", "--rounds", "1"]
    assert poll.main([*argv, "--out", str(out)]) == 0
    result = _results(out)["result"]
    for phase in ("bare", "exporter", "exporter_load_only"):
        (run,) = result["phases"][phase]
        assert run["domain_polls"] >= 1
        assert run["wall_seconds"] >= 2
        (empty,) = result["phases_empty"][phase]
        assert empty["polls"] >= 1
        assert empty["domain_polls"] == 0
        assert phase in result["fixed_cpu_seconds_per_poll"]
        assert phase in result["marginal_cpu_seconds_per_domain"]
    # Two-second windows may measure no CPU at all (10 ms clock ticks): then no ratio.
    for ratio in ("ratio", "cpustats_ratio", "marginal_ratio", "marginal_cpustats_ratio"):
        assert result[ratio] is None or result[ratio] > 0


def test_hostile_runs_every_scenario_against_a_serving_exporter(tmp_path: Path) -> None:
    out = tmp_path / "hostile.json"
    argv = ["--seconds", "2", "--slow", "3", "--burst", "4", "--loops", "2", "--vms", "20"]
    assert hostile.main([*argv, "--out", str(out)]) == 0
    results = {r["scenario"]: r for r in _results(out)["results"]}
    assert set(results) == set(hostile.SCENARIOS)
    for result in results.values():
        assert result["normal_scrapes"] >= 3
        assert 0 <= result["normal_on_time"] <= result["normal_scrapes"]
    assert results["slow-tls"]["load"]["slow_clients"]["opened"] >= 3
    assert results["burst"]["load"]["burst_connections"] == 0 or (
        results["burst"]["load"]["burst_connections"] % 4 == 0
    )
    assert results["loops"]["load"]["loop_statuses"]


def test_launchers_compares_node_mode_with_one_connection_and_runs_the_faults(
    tmp_path: Path,
) -> None:
    out = tmp_path / "launchers.json"
    argv = ["--launchers", "3", "--interval", "1s", "--seconds", "2", "--faults"]
    launchers.main([*argv, "--out", str(out)])  # the exit code is the goals: not asserted here
    result = _results(out)["result"]
    node, single = result["setups"]
    assert (node["setup"], single["setup"]) == ("node-mode", "one-connection")
    for setup in (node, single):
        assert setup["vms_listed_at_end"] == 3
        assert setup["polls"] >= 1
        assert setup["cpu_ms_per_vm_poll"] > 0
        assert setup["rss_bytes"] > 0
    assert node["open_fds"] > single["open_fds"], "a connection per launcher"
    assert result["ratio"] > 0
    faults = result["faults"]
    assert (faults["faulty"], faults["healthy"]) == (1, 2)
    assert set(faults["goals"]) == {
        "healthy_late_at_most_one_interval",
        "healthy_never_missing",
        "hung_socket_down_within_two_intervals",
        "deleted_series_gone_within_one_interval",
    }
    assert faults["exporter_tracebacks"] == 0


def test_peer_compares_guestload_with_debians_libvirt_exporter(tmp_path: Path) -> None:
    """Against libvirt's test driver (one domain, no agent): the real-VM run is too heavy here."""
    out = tmp_path / "peer.json"
    argv = ["--uri", "test:///default", "--interval", "1s", "--seconds", "2", "--rounds", "1"]
    assert peer.main([*argv, "--out", str(out)]) == 0
    result = _results(out)["result"]
    for phase in peer.PHASES:
        (run,) = result["phases"][phase]
        assert run["polls"] >= 1, phase
        assert run["domain_polls"] == run["polls"], phase  # the test driver runs one domain
        assert run["wall_seconds"] >= 2, phase
        assert run["cpu_seconds"] >= 0, phase
    assert result["phases"]["guestload"][0]["scrapes"] >= 1
    assert result["median_cpu_seconds_per_vm_collection"]["peer"] > 0
    assert result["summary"].startswith("per-VM CPU: guestload ")
    assert "vs prometheus-libvirt-exporter " in result["summary"]
    assert result["ratio"] is None or result["ratio"] > 0


def test_threads_splits_the_served_process_cpu_by_thread(tmp_path: Path) -> None:
    out = tmp_path / "threads.json"
    argv = ["--source", "simulated", "--vms", "3", "--seconds", "2", "--rounds", "1"]
    assert threads.main([*argv, "--out", str(out)]) == 0
    (run,) = _results(out)["result"]["runs"]
    assert run["polls"] >= 1
    assert run["scrapes"] == 2
    by_thread = run["threads"]
    assert {"main", "guestload-agent", "guestload-http", threads.ENDED} <= set(by_thread)
    assert by_thread["main"]["cpu_ms_per_poll"] > 0
    assert sum(t["cpu_ms_per_poll"] for t in by_thread.values()) <= run["cpu_ms_per_poll"] * 1.01
