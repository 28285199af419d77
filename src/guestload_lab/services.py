"""The monitoring chain around the VMs: guestload, Prometheus, Alertmanager and a webhook sink.

Every server listens on 127.0.0.1 on a free port, keeps its data under a work folder, and is
started through a :class:`~guestload_lab.processes.ProcessRegistry`, which stops it by process
id however the test ends.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

from guestload_lab.processes import ProcessRegistry

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_RULE_FILE = REPO_ROOT / "monitoring" / "rules" / "guestload.rules.yml"

T = TypeVar("T")


class ServiceError(RuntimeError):
    """A server did not start or answer."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str, *, timeout: float = 5.0) -> bytes:
    """GET ``url`` (loopback only) and return the body; raises on a non-2xx answer."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310  (own loopback servers)
        body: bytes = response.read()
        return body


def http_post_json(url: str, payload: Any, *, timeout: float = 5.0) -> bytes:
    request = urllib.request.Request(  # noqa: S310  (own loopback servers)
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body: bytes = response.read()
        return body


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns something other than None or False; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(interval)


def _wait_http_ready(url: str, *, timeout: float, log: Path, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if not alive():
            raise ServiceError(f"{url}: process exited\n{_tail(log)}")
        try:
            http_get(url, timeout=2.0)
        except (OSError, urllib.error.URLError) as error:
            last_error = str(error)
            time.sleep(0.2)
        else:
            return
    raise ServiceError(f"{url} not ready in {timeout:.0f} s ({last_error})\n{_tail(log)}")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


# -- webhook sink ---------------------------------------------------------------------------


class WebhookReceiver:
    """An HTTP server that records every JSON body Alertmanager POSTs to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._payloads: list[tuple[float, dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {"unparsable": body.decode(errors="replace")}
                with receiver._lock:
                    receiver._payloads.append((time.monotonic(), payload))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the payloads are the record."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/alerts"

    def payloads(self) -> list[dict[str, Any]]:
        """Every notification received so far, oldest first."""
        with self._lock:
            return [payload for _, payload in self._payloads]

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification, oldest first, each with its ``status``
        (firing/resolved) and ``receivedAt``: the ``time.monotonic()`` of its arrival."""
        with self._lock:
            received = list(self._payloads)
        return [
            {**alert, "receivedAt": at}
            for at, payload in received
            for alert in payload.get("alerts", [])
        ]

    def wait_for_alert(
        self, alertname: str, /, *, status: str = "firing", timeout: float = 60.0, **labels: str
    ) -> dict[str, Any]:
        """The first recorded alert named ``alertname`` with ``status`` and ``labels``."""
        wanted = {"alertname": alertname, **labels}

        def find() -> dict[str, Any] | None:
            for alert in self.alerts():
                have = alert.get("labels", {})
                if alert.get("status") == status and all(
                    have.get(key) == value for key, value in wanted.items()
                ):
                    return alert
            return None

        return wait_until(find, timeout=timeout, what=f"webhook notification {alertname} {status}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# -- Alertmanager ---------------------------------------------------------------------------


class Alertmanager:
    """A real Alertmanager routing every alert to one webhook, with short timers."""

    def __init__(
        self,
        *,
        workdir: Path,
        webhook_url: str,
        registry: ProcessRegistry,
        group_wait: str = "1s",
        group_interval: str = "2s",
        repeat_interval: str = "1h",
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self._registry = registry
        self._log = workdir / "alertmanager.log"
        self._config = {
            "route": {
                "receiver": "webhook",
                "group_by": ["alertname", "namespace", "name"],
                "group_wait": group_wait,
                "group_interval": group_interval,
                "repeat_interval": repeat_interval,
            },
            "receivers": [
                {
                    "name": "webhook",
                    "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
                }
            ],
        }
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "alertmanager.yml"
        config.write_text(yaml.safe_dump(self._config))
        self._process = self._registry.spawn(
            [
                ALERTMANAGER,
                f"--config.file={config}",
                f"--storage.path={self.workdir / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            log_path=self._log,
        )
        process = self._process  # narrowed for the closure below
        _wait_http_ready(
            f"{self.url}/-/ready",
            timeout=timeout,
            log=self._log,
            alive=lambda: process.poll() is None,
        )

    def stop(self) -> None:
        if self._process is not None:
            self._registry.stop(self._process)
            self._process = None

    def alerts(self) -> list[dict[str, Any]]:
        """Alertmanager's current alerts (``/api/v2/alerts``)."""
        result: list[dict[str, Any]] = json.loads(http_get(f"{self.url}/api/v2/alerts"))
        return result


# -- Prometheus -----------------------------------------------------------------------------


class Prometheus:
    """A real Prometheus scraping ``targets`` and evaluating ``rule_files`` every few seconds."""

    def __init__(
        self,
        *,
        workdir: Path,
        registry: ProcessRegistry,
        targets: Sequence[str] = (),
        rule_files: Sequence[Path] = (),
        alertmanager_url: str | None = None,
        interval_seconds: float = 2.0,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.targets = list(targets)
        self.rule_files = list(rule_files)
        self.alertmanager_url = alertmanager_url
        self.interval_seconds = interval_seconds
        self._registry = registry
        self._log = workdir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        interval = f"{self.interval_seconds:g}s"
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": "guestload",
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        if self.alertmanager_url is not None:
            host = urllib.parse.urlsplit(self.alertmanager_url).netloc
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
        return config

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        self._process = self._registry.spawn(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                f"--rules.alert.resend-delay={self.interval_seconds:g}s",
                "--log.level=warn",
            ],
            log_path=self._log,
        )
        process = self._process  # narrowed for the closure below
        _wait_http_ready(
            f"{self.url}/-/ready",
            timeout=timeout,
            log=self._log,
            alive=lambda: process.poll() is None,
        )

    def stop(self) -> None:
        if self._process is not None:
            self._registry.stop(self._process)
            self._process = None

    def _api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        reply = json.loads(http_get(f"{self.url}/api/v1/{path}?{query}"))
        if reply.get("status") != "success":
            raise ServiceError(f"Prometheus {path}: {reply}")
        return reply["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (``metric`` labels and ``value`` pairs)."""
        data = self._api("query", query=expression)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_values(self, expression: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Instant query as {sorted label pairs: value}."""
        return {
            tuple(sorted(item["metric"].items())): float(item["value"][1])
            for item in self.query(expression)
        }

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) from ``/api/v1/alerts``."""
        result: list[dict[str, Any]] = self._api("alerts")["alerts"]
        return result

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        return [
            alert
            for alert in self.alerts()
            if alert["labels"].get("alertname") == alertname and alert["state"] == "firing"
        ]

    def targets_health(self) -> list[str]:
        """The health (up/down/unknown) of every active scrape target."""
        return [target["health"] for target in self._api("targets")["activeTargets"]]

    def rule_groups(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._api("rules")["groups"]
        return result


# -- the exporter ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One exposition sample."""

    name: str
    labels: dict[str, str]
    value: float


class Exporter:
    """``guestload serve`` as a child process against a libvirt URI."""

    def __init__(
        self,
        *,
        libvirt_uri: str,
        node: str,
        workdir: Path,
        registry: ProcessRegistry,
        interval: str = "5s",
        agent_timeout: str = "2s",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.libvirt_uri = libvirt_uri
        self.node = node
        self.workdir = workdir
        self.port = free_port()
        self.interval = interval
        self.agent_timeout = agent_timeout
        self.extra_args = list(extra_args)
        self._registry = registry
        self._log = workdir / "guestload.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def log_path(self) -> Path:
        return self._log

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "guestload",
            "serve",
            "--libvirt.uri",
            self.libvirt_uri,
            "--web.listen-address",
            self.address,
            "--collector.interval",
            self.interval,
            "--collector.agent-timeout",
            self.agent_timeout,
            "--node",
            self.node,
            *self.extra_args,
        ]

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._process = self._registry.spawn(self.argv(), log_path=self._log)
        process = self._process  # narrowed for the closure below
        _wait_http_ready(
            f"{self.url}/metrics",
            timeout=timeout,
            log=self._log,
            alive=lambda: process.poll() is None,
        )

    def stop(self) -> None:
        if self._process is not None:
            self._registry.stop(self._process)
            self._process = None

    def scrape_text(self) -> str:
        return http_get(f"{self.url}/metrics").decode()

    def scrape(self) -> list[Sample]:
        """Every sample the exporter exposes right now."""
        return [
            Sample(name=sample.name, labels=dict(sample.labels), value=float(sample.value))
            for family in text_string_to_metric_families(self.scrape_text())
            for sample in family.samples
        ]

    def samples(self, metric: str, /, **labels: str) -> list[Sample]:
        """The samples named ``metric`` whose labels include ``labels``."""
        return [
            sample
            for sample in self.scrape()
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items())
        ]

    def log_text(self) -> str:
        return _tail(self._log, lines=200)
