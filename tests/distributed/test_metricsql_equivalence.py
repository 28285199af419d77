"""The project's rules record the same values and raise the same alerts under MetricsQL.

The input of every promtool test case (``monitoring/tests``) goes, as real samples with their
timestamps, through one vmagent into both a Prometheus and a VictoriaMetrics. vmalert then
replays the shipped rule file over the whole range twice: once querying Prometheus (PromQL),
once querying VictoriaMetrics (MetricsQL), each writing its results back into the store it
queries, so chained rules read their own engine's results. Every recorded series and every
``ALERTS`` series (pending and firing) must then match at every step of every case.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import yaml

from guestload.settings import parse_duration
from guestload_lab.processes import ProcessRegistry
from guestload_lab.replay import (
    Samples,
    comparable,
    differences,
    import_text,
    load_cases,
    samples_from_export,
    samples_from_matrix,
)
from guestload_lab.services import PROJECT_RULE_FILE, Prometheus, wait_until
from guestload_lab.victoria import VictoriaMetrics, VMAgent, VMAlert
from tests.monitoring.monitoring_bundle import PROMTOOL_TESTS, recorded_metrics

# Far enough back that every case ends before now, within Prometheus's out-of-order window.
OUT_OF_ORDER_DAYS = 30
OUT_OF_ORDER_WINDOW = f"{OUT_OF_ORDER_DAYS}d"
DAY = 86400.0
INPUT_METRICS = "kubevirt_.*|guestload_.*|up"
GUEST_ALERTS = {
    "GuestVCPUQueueHighWarning",
    "GuestVCPUQueueHighCritical",
    "GuestIOStall",
    "GuestVCPUSaturation",
    "GuestVCPUHostContention",
}


EDGE_RECORDS = frozenset({"namespace_name_node:guestload_guest_load_warming_up:info"})
"""Records that exist only in the first minutes of a series' life (a Windows VM's load warming
up), where the replay compares nothing by design (``steady_steps``): promtool tests them."""


def rules_without_annotations(path: Path) -> Path:
    """The shipped rule file less its annotations: vmalert's replay mode cannot run their
    ``query`` template, and they change no value (the live test renders them)."""
    document = yaml.safe_load(PROJECT_RULE_FILE.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _first_start(span_seconds: float) -> float:
    """A midnight far enough back that cases spanning ``span_seconds`` end a day before now."""
    days_back = math.ceil(span_seconds / DAY) + 1
    assert days_back < OUT_OF_ORDER_DAYS, (
        f"the cases span {span_seconds / DAY:.1f} days: more than Prometheus's out-of-order "
        f"window of {OUT_OF_ORDER_WINDOW} takes"
    )
    return (int(time.time()) // DAY - days_back) * DAY


def test_every_recorded_series_and_alert_matches_between_promql_and_metricsql(
    tmp_path: Path,
) -> None:
    laid_out = load_cases(PROMTOOL_TESTS, first_start=0.0)
    cases = load_cases(PROMTOOL_TESTS, first_start=_first_start(laid_out[-1].end))
    start, end = cases[0].start, cases[-1].end
    assert end < time.time() - 3600, "the cases must lie in the past"
    text = import_text(cases)
    input_samples = text.count("\n")
    rule_file = rules_without_annotations(tmp_path / "replay.rules.yml")
    alert_for = {
        rule["alert"]: parse_duration(rule.get("for", "0s"))
        for group in yaml.safe_load(rule_file.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    names = "|".join(["ALERTS", *sorted(recorded_metrics())])

    with ProcessRegistry() as registry:
        store = VictoriaMetrics(workdir=tmp_path / "vm", registry=registry)
        prometheus = Prometheus(
            workdir=tmp_path / "prometheus",
            registry=registry,
            extra_config={"storage": {"tsdb": {"out_of_order_time_window": OUT_OF_ORDER_WINDOW}}},
            extra_args=["--web.enable-remote-write-receiver"],
        )
        store.start()
        prometheus.start()
        agent = VMAgent(
            workdir=tmp_path / "vmagent",
            registry=registry,
            remote_write=[f"{store.url}/api/v1/write", f"{prometheus.url}/api/v1/write"],
        )
        agent.start()
        agent.import_prometheus(text)

        span = f"{round(end - start) + 3600}s"

        def from_prometheus(names: str) -> Samples:
            matrix = prometheus.query(f'{{__name__=~"{names}"}}[{span}]', time=f"{end}")
            return samples_from_matrix(matrix)

        def from_store(names: str) -> Samples:
            return samples_from_export(
                store.export(f'{{__name__=~"{names}"}}', start=start, end=end)
            )

        def count(samples: Samples) -> int:
            return sum(len(points) for points in samples.values())

        wait_until(
            lambda: (
                count(from_prometheus(INPUT_METRICS)) == input_samples
                and count(from_store(INPUT_METRICS)) == input_samples
            ),
            timeout=180,
            interval=2.0,
            what=f"{input_samples} input samples in both stores",
        )

        replays = {
            "promql": VMAlert(
                workdir=tmp_path / "vmalert-promql",
                registry=registry,
                rule_files=[rule_file],
                datasource=prometheus.url,
                remote_write=prometheus.url,
                interval="1m",
            ),
            "metricsql": VMAlert(
                workdir=tmp_path / "vmalert-metricsql",
                registry=registry,
                rule_files=[rule_file],
                datasource=store.url,
                remote_write=store.url,
                interval="1m",
            ),
        }
        errors: list[BaseException] = []

        def replay(vmalert: VMAlert) -> None:
            try:
                vmalert.replay(start=start, end=end)
            except BaseException as error:  # noqa: BLE001 - reported by the test thread
                errors.append(error)

        threads = [threading.Thread(target=replay, args=(v,)) for v in replays.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        time.sleep(2)  # the last remote write of each replay

        promql = comparable(from_prometheus(names), cases, alert_for)
        metricsql = comparable(from_store(names), cases, alert_for)

    recorded = {key: points for key, points in promql.items() if key[0] != "ALERTS"}
    alerts = {key: points for key, points in promql.items() if key[0] == "ALERTS"}
    # The input exercises every rule: each recorded metric has samples at steady steps, and
    # every guest alert fires there. (The exporter alerts' cases have gaps by design.)
    assert {name for name, _ in recorded} == recorded_metrics() - EDGE_RECORDS
    firing = {
        dict(labels)["alertname"] for _, labels in alerts if dict(labels)["alertstate"] == "firing"
    }
    assert firing >= GUEST_ALERTS
    assert sum(len(points) for points in promql.values()) > 5000

    found = differences(promql, metricsql)
    report = "\n".join(
        f"{name}{dict(labels)} @{at - start:.0f}s: PromQL {a} MetricsQL {b}"
        for (name, labels), at, a, b in found[:40]
    )
    assert not found, f"{len(found)} samples differ (first 40):\n{report}"


@pytest.mark.parametrize(
    ("notation", "expected"),
    [
        ("0+60x3", [0.0, 60.0, 120.0, 180.0]),
        ("11.5x2", [11.5, 11.5, 11.5]),
        ("_x2 4 5-1x2", [None, None, 4.0, 5.0, 4.0, 3.0]),
        ("-2x1", [-2.0, -2.0]),
        ("1e3 _", [1000.0, None]),
        ("1 1 0 stale", [1.0, 1.0, 0.0, None]),
    ],
)
def test_promtool_notation_expands_as_promtool_does(
    notation: str, expected: list[float | None]
) -> None:
    from guestload_lab.replay import expand_values  # noqa: PLC0415 - one helper under test

    assert expand_values(notation) == expected
