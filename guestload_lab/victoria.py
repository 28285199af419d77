"""The distributed path on VictoriaMetrics: a central store, per-site vmagents, vmalert.

Debian's ``victoria-metrics`` package ships all three binaries. Like the servers in
:mod:`guestload_lab.services`, each listens on 127.0.0.1 on a free port, keeps its data under a
work folder, and is started and stopped through a :class:`ProcessRegistry`.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import (
    PROJECT_RULE_FILE,
    Alertmanager,
    ServiceError,
    _LoopbackServer,
    http_get,
)

VICTORIA_METRICS = "/usr/bin/victoria-metrics"
VMAGENT = "/usr/bin/vmagent"
VMALERT = "/usr/bin/vmalert"


def _request(url: str, *, data: bytes, timeout: float = 60.0) -> bytes:
    request = urllib.request.Request(url, data=data, method="POST")  # noqa: S310 (loopback)
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body: bytes = response.read()
        return body


class VictoriaMetrics(_LoopbackServer):
    """Single-node VictoriaMetrics: the central store every site writes to."""

    def __init__(
        self, *, workdir: Path, registry: ProcessRegistry, extra_args: Sequence[str] = ()
    ) -> None:
        super().__init__(workdir=workdir, registry=registry, log_name="victoria-metrics.log")
        self.extra_args = list(extra_args)

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServiceError("victoria-metrics was not started")
        return self._process.pid

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._run(
            [
                VICTORIA_METRICS,
                f"-storageDataPath={self.workdir / 'vm-data'}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                # Rule chains read what the previous rule wrote a moment ago: no result cache.
                "-search.disableCache",
                "-loggerLevel=WARN",
                *self.extra_args,
            ],
            ready_path="/health",
            timeout=timeout,
        )

    def query(self, expression: str, **params: str) -> list[dict[str, Any]]:
        """Instant MetricsQL query; the result vector."""
        query = urllib.parse.urlencode({"query": expression, **params})
        reply = json.loads(http_get(f"{self.url}/api/v1/query?{query}", timeout=60))
        if reply.get("status") != "success":
            raise ServiceError(f"VictoriaMetrics query: {reply}")
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def export(self, match: str, *, start: float, end: float) -> list[dict[str, Any]]:
        """Raw samples of every series matching ``match`` in [start, end] (seconds)."""
        query = urllib.parse.urlencode({"match[]": match, "start": start, "end": end})
        body = http_get(f"{self.url}/api/v1/export?{query}", timeout=120).decode()
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def series_count(self) -> int:
        """Series in the store (``/api/v1/series/count``; a ``count()`` over every series
        fails beyond ``-search.maxUniqueTimeseries``, 300,000 by default)."""
        reply = json.loads(http_get(f"{self.url}/api/v1/series/count", timeout=60))
        return int(reply["data"][0])

    def metrics_text(self) -> str:
        return http_get(f"{self.url}/metrics", timeout=30).decode()


def hashmod_scrape_config(
    *, job: str, targets: Sequence[str], shards: int, shard: int, interval: str
) -> dict[str, Any]:
    """A scrape job that keeps only this shard's share of ``targets`` (``hashmod`` relabel).

    The same job with ``shard`` 0..``shards``-1 on ``shards`` scrapers covers every target once;
    Prometheus and vmagent read it alike.
    """
    return {
        "job_name": job,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "static_configs": [{"targets": list(targets)}],
        "relabel_configs": [
            {
                "source_labels": ["__address__"],
                "modulus": shards,
                "target_label": "__tmp_shard",
                "action": "hashmod",
            },
            {"source_labels": ["__tmp_shard"], "regex": str(shard), "action": "keep"},
        ],
    }


class VMAgent(_LoopbackServer):
    """vmagent: scrapes its ``scrape_configs`` (if any) and remote-writes to ``remote_write``.

    ``external_labels`` name the site (``site="a"``), so equal targets on two sites stay apart.
    Its ``/api/v1/import/prometheus`` takes samples with timestamps and forwards them too.
    """

    def __init__(
        self,
        *,
        workdir: Path,
        registry: ProcessRegistry,
        remote_write: Sequence[str],
        scrape_configs: Sequence[dict[str, Any]] = (),
        external_labels: dict[str, str] | None = None,
        name: str = "vmagent",
    ) -> None:
        super().__init__(workdir=workdir, registry=registry, log_name=f"{name}.log")
        self.name = name
        self.remote_write = list(remote_write)
        self.scrape_configs = list(scrape_configs)
        self.external_labels = dict(external_labels or {})

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServiceError("vmagent was not started")
        return self._process.pid

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            VMAGENT,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-remoteWrite.tmpDataPath={self.workdir / f'{self.name}-queue'}",
            "-loggerLevel=WARN",
            *(f"-remoteWrite.url={url}" for url in self.remote_write),
        ]
        if self.scrape_configs:
            config = self.workdir / f"{self.name}.yml"
            global_config: dict[str, Any] = {}
            if self.external_labels:
                global_config["external_labels"] = self.external_labels
            config.write_text(
                yaml.safe_dump({"global": global_config, "scrape_configs": self.scrape_configs})
            )
            argv.append(f"-promscrape.config={config}")
        self._run(argv, ready_path="/health", timeout=timeout)

    def import_prometheus(self, text: str) -> None:
        """Forward samples in the text format, each with its own timestamp (milliseconds)."""
        _request(f"{self.url}/api/v1/import/prometheus", data=text.encode())

    def metrics_text(self) -> str:
        return http_get(f"{self.url}/metrics", timeout=30).decode()


class VMAlert(_LoopbackServer):
    """vmalert evaluating ``rule_files`` against ``datasource`` every ``interval``.

    Results (recorded series, ``ALERTS``) go to ``remote_write``; alerts to ``notifier``.
    """

    def __init__(
        self,
        *,
        workdir: Path,
        registry: ProcessRegistry,
        rule_files: Sequence[Path],
        datasource: str,
        remote_write: str,
        notifier: str | None = None,
        interval: str = "30s",
        name: str = "vmalert",
    ) -> None:
        super().__init__(workdir=workdir, registry=registry, log_name=f"{name}.log")
        self.rule_files = list(rule_files)
        self.datasource = datasource
        self.remote_write = remote_write
        self.notifier = notifier
        self.interval = interval

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServiceError("vmalert was not started")
        return self._process.pid

    def common_args(self) -> list[str]:
        return [
            *(f"-rule={path}" for path in self.rule_files),
            f"-datasource.url={self.datasource}",
            f"-remoteWrite.url={self.remote_write}",
            f"-evaluationInterval={self.interval}",
            "-loggerLevel=WARN",
        ]

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        notifier = [f"-notifier.url={self.notifier}"] if self.notifier else []
        self._run(
            [
                VMALERT,
                f"-httpListenAddr=127.0.0.1:{self.port}",
                *self.common_args(),
                *notifier,
            ],
            ready_path="/health",
            timeout=timeout,
        )

    def replay(self, *, start: float, end: float, timeout: float = 600.0) -> str:
        """Evaluate every rule over [start, end] (seconds) in one run; its log.

        Replay evaluates the groups one after the other and each rule over the whole range,
        so a rule that reads an earlier rule's result finds it stored.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            VMALERT,
            *self.common_args(),
            f"-replay.timeFrom={_rfc3339(start)}",
            f"-replay.timeTo={_rfc3339(end)}",
            # One query step per evaluation (the default step is 5m, whatever the interval).
            f"-datasource.queryStep={self.interval}",
            "-replay.disableProgressBar",
            "-replay.rulesDelay=3s",
            "-remoteWrite.flushInterval=200ms",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        log = result.stdout + result.stderr
        (self.workdir / "vmalert-replay.log").write_text(log)
        if result.returncode != 0:
            raise ServiceError(f"vmalert replay failed ({result.returncode}):\n{log[-3000:]}")
        return log

    def groups(self) -> list[dict[str, Any]]:
        """Rule groups with each rule's last evaluation (``/api/v1/rules``)."""
        reply = json.loads(http_get(f"{self.url}/api/v1/rules", timeout=30))
        groups: list[dict[str, Any]] = reply["data"]["groups"]
        return groups

    def alerts(self) -> list[dict[str, Any]]:
        reply = json.loads(http_get(f"{self.url}/api/v1/alerts", timeout=30))
        alerts: list[dict[str, Any]] = reply["data"]["alerts"] or []
        return alerts

    def metrics_text(self) -> str:
        return http_get(f"{self.url}/metrics", timeout=30).decode()


@dataclass(frozen=True)
class DistributedPath:
    """The running topology: the store, one vmagent per shard, Alertmanager and vmalert."""

    store: VictoriaMetrics
    agents: list[VMAgent]
    alertmanager: Alertmanager
    vmalert: VMAlert


def start_distributed_path(
    *,
    workdir: Path,
    registry: ProcessRegistry,
    targets: Sequence[str],
    shards: int,
    interval: str,
    webhook_url: str,
    latency_offset: str,
) -> DistributedPath:
    """Start the path: ``shards`` vmagents share ``targets`` by ``hashmod`` and remote-write to
    one VictoriaMetrics, where vmalert evaluates the project's rules and notifies an
    Alertmanager posting to ``webhook_url``. The processes stop with ``registry``."""
    store = VictoriaMetrics(
        workdir=workdir / "central",
        registry=registry,
        extra_args=[f"-search.latencyOffset={latency_offset}"],
    )
    store.start()
    agents = [
        VMAgent(
            workdir=workdir / f"shard-{shard}",
            registry=registry,
            remote_write=[f"{store.url}/api/v1/write"],
            scrape_configs=[
                hashmod_scrape_config(
                    job="guestload", targets=targets, shards=shards, shard=shard, interval=interval
                )
            ],
            external_labels={"shard": str(shard)},
            name=f"vmagent-{shard}",
        )
        for shard in range(shards)
    ]
    for agent in agents:
        agent.start()
    alertmanager = Alertmanager(
        workdir=workdir / "alertmanager", webhook_url=webhook_url, registry=registry
    )
    alertmanager.start()
    vmalert = VMAlert(
        workdir=workdir / "vmalert",
        registry=registry,
        rule_files=[PROJECT_RULE_FILE],
        datasource=store.url,
        remote_write=store.url,
        notifier=alertmanager.url,
        interval=interval,
    )
    vmalert.start()
    return DistributedPath(store=store, agents=agents, alertmanager=alertmanager, vmalert=vmalert)


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
