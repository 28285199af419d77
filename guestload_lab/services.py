"""The monitoring chain around the VMs: guestload, Prometheus, Alertmanager and a webhook sink.

Every server listens on 127.0.0.1 on a free port, keeps its data under a work folder, and is
started through a :class:`~guestload_lab.processes.ProcessRegistry`, which stops it by process
id however the test ends.
"""

from __future__ import annotations

import atexit
import functools
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from guestload_lab.processes import DEFAULT_GRACE_SECONDS, ProcessRegistry
from guestload_lab.waiting import wait_until as wait_until  # noqa: PLC0414 - re-exported

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_RULE_FILE = REPO_ROOT / "monitoring" / "rules" / "guestload.rules.yml"


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


def _wait_http_ready(url: str, *, timeout: float, log: Path, alive: Callable[[], bool]) -> None:
    last_error = [""]

    def answers() -> bool:
        if not alive():
            raise ServiceError(f"{url}: process exited\n{_tail(log)}")
        try:
            http_get(url, timeout=2.0)
        except (OSError, urllib.error.URLError) as error:
            last_error[0] = str(error)
            return False
        return True

    wait_until(
        answers,
        timeout=timeout,
        interval=0.2,
        what=f"{url} ready",
        detail=lambda: f"({last_error[0]})\n{_tail(log)}",
        error=ServiceError,
    )


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


# -- servers on loopback ---------------------------------------------------------------------


class _LoopbackServer:
    """A server process on a free 127.0.0.1 port, started and stopped through a registry."""

    def __init__(self, *, workdir: Path, registry: ProcessRegistry, log_name: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self._registry = registry
        self._log = workdir / log_name
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, argv: list[str], *, ready_path: str, timeout: float) -> None:
        """Start ``argv`` and wait until ``ready_path`` answers."""
        process = self._registry.spawn(argv, log_path=self._log)
        self._process = process
        _wait_http_ready(
            f"{self.url}{ready_path}",
            timeout=timeout,
            log=self._log,
            alive=lambda: process.poll() is None,
        )

    def stop(self, *, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> float:
        """SIGTERM the process (SIGKILL after ``grace_seconds``); seconds until it ended."""
        started = time.monotonic()
        if self._process is not None:
            self._registry.stop(self._process, grace_seconds=grace_seconds)
        return time.monotonic() - started


# -- Alertmanager ---------------------------------------------------------------------------


class Alertmanager(_LoopbackServer):
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
        super().__init__(workdir=workdir, registry=registry, log_name="alertmanager.log")
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

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "alertmanager.yml"
        config.write_text(yaml.safe_dump(self._config))
        self._run(
            [
                ALERTMANAGER,
                f"--config.file={config}",
                f"--storage.path={self.workdir / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            ready_path="/-/ready",
            timeout=timeout,
        )

    def alerts(self) -> list[dict[str, Any]]:
        """Alertmanager's current alerts (``/api/v2/alerts``)."""
        result: list[dict[str, Any]] = json.loads(http_get(f"{self.url}/api/v2/alerts"))
        return result


# -- Prometheus -----------------------------------------------------------------------------


class Prometheus(_LoopbackServer):
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
        extra_config: dict[str, Any] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """``extra_config`` is merged into the configuration's top level, ``extra_args`` are
        appended to the command line."""
        super().__init__(workdir=workdir, registry=registry, log_name="prometheus.log")
        self.extra_config = dict(extra_config or {})
        self.extra_args = list(extra_args)
        self.targets = list(targets)
        self.rule_files = list(rule_files)
        self.alertmanager_url = alertmanager_url
        self.interval_seconds = interval_seconds

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
        return {**config, **self.extra_config}

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        self._run(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                f"--rules.alert.resend-delay={self.interval_seconds:g}s",
                "--log.level=warn",
                *self.extra_args,
            ],
            ready_path="/-/ready",
            timeout=timeout,
        )

    def _api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        reply = json.loads(http_get(f"{self.url}/api/v1/{path}?{query}"))
        if reply.get("status") != "success":
            raise ServiceError(f"Prometheus {path}: {reply}")
        return reply["data"]

    def query(self, expression: str, **params: str) -> list[dict[str, Any]]:
        """Instant query (``params`` such as ``time``); the result (``metric`` labels and
        ``value`` pairs, or ``values`` for a range selector)."""
        data = self._api("query", query=expression, **params)
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


SYSTEM_PYTHON = Path("/usr/bin/python3")
"""The interpreter another user runs guestload with (see :func:`command_for_other_users`)."""


RUNTIME_DISTRIBUTIONS = ("prometheus-client", "libvirt-python", "PyYAML", "bcrypt")
"""What ``guestload serve`` imports besides itself (pyproject.toml's dependencies)."""


def command_for_other_users() -> tuple[list[str], dict[str, str]]:
    """How another user runs this checkout's guestload: argv prefix and environment.

    The checkout and the virtualenv may live where only root can enter (a 0700 home, pyenv
    under /root), so other users run the system's Python of the same minor version on a
    world-readable copy of guestload and its runtime packages (:func:`shared_packages`).
    """
    result = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    wanted = str(sys.version_info[:2])
    if result.returncode != 0 or result.stdout.strip() != wanted:
        raise ServiceError(
            f"{SYSTEM_PYTHON} must be Python {wanted} to run guestload as another user"
        )
    return [str(SYSTEM_PYTHON), "-m", "guestload"], {
        "PYTHONPATH": str(shared_packages()),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


@functools.cache
def shared_packages() -> Path:
    """A folder every user can read holding guestload and its runtime packages.

    Made once per process under the system's temporary folder, removed at exit.
    """
    import guestload  # noqa: PLC0415 - only to find the source folder in use

    folder = Path(tempfile.mkdtemp(prefix="guestload-shared-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    folder.chmod(0o755)
    shutil.copytree(
        Path(guestload.__file__).resolve().parent,
        folder / "guestload",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in RUNTIME_DISTRIBUTIONS:
        distribution = importlib.metadata.distribution(name)
        for file in distribution.files or ():
            if file.parts[0] == ".." or file.suffix == ".pyc":
                continue
            target = folder / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(str(distribution.locate_file(file))), target)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else path.stat().st_mode | 0o444)
    return folder


class Exporter(_LoopbackServer):
    """``guestload serve`` as a child process on a free loopback port.

    ``libvirt_uri`` None leaves ``--libvirt.uri`` to ``extra_args`` (or its default), and
    ``agent_timeout`` None leaves the agent timeout to follow the interval. ``user`` and
    ``group`` run it as another account. ``command`` replaces this checkout's
    ``python -m guestload`` (an installed wheel, a container's root file system). ``start``
    waits for its ``listening`` log line (so it works with TLS too); each instance in a
    ``workdir`` needs its own ``name``, which names its log file.
    """

    def __init__(
        self,
        *,
        libvirt_uri: str | None,
        node: str,
        workdir: Path,
        registry: ProcessRegistry,
        interval: str = "5s",
        agent_timeout: str | None = "2s",
        extra_args: Sequence[str] = (),
        name: str = "guestload",
        user: str | None = None,
        group: str | None = None,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        super().__init__(workdir=workdir, registry=registry, log_name=f"{name}.log")
        self.command = None if command is None else list(command)
        self.libvirt_uri = libvirt_uri
        self.node = node
        self.interval = interval
        self.agent_timeout = agent_timeout
        self.extra_args = list(extra_args)
        self.user = user
        self.group = group
        self.env = dict(env or {})

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self._log

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The running (or ended) process; an error before ``start``."""
        if self._process is None:
            raise ServiceError("guestload was not started")
        return self._process

    def argv(self) -> list[str]:
        uri = [] if self.libvirt_uri is None else ["--libvirt.uri", self.libvirt_uri]
        return [
            "serve",
            *uri,
            "--web.listen-address",
            self.address,
            "--collector.interval",
            self.interval,
            *(
                []
                if self.agent_timeout is None
                else ["--collector.agent-timeout", self.agent_timeout]
            ),
            "--node",
            self.node,
            *self.extra_args,
        ]

    def start(self, timeout: float = 30.0) -> None:
        """Start the process and wait until it listens."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.command is not None:
            prefix, env = self.command, dict(os.environ)
        elif self.user is None:
            prefix, env = [sys.executable, "-m", "guestload"], dict(os.environ)
        else:
            prefix, extra = command_for_other_users()
            env = {**os.environ, **extra}
        self._process = self._registry.spawn(
            [*prefix, *self.argv()],
            log_path=self._log,
            env={**env, **self.env},
            cwd=self.workdir,
            user=self.user,
            group=self.group,
        )
        self.wait_for_log("msg=listening", timeout=timeout)

    def wait_for_log(self, text: str, *, timeout: float) -> None:
        """Wait until ``text`` is in the log; an error if the process exits first."""

        def logged() -> bool:
            if text in self.log():
                return True
            if self.process.poll() is not None:
                raise ServiceError(
                    f"guestload exited with {self.process.returncode} before logging {text!r}"
                    f"\n{self.log()}"
                )
            return False

        wait_until(logged, timeout=timeout, interval=0.05, what=repr(text), detail=self.log)

    def wait_ready(self, *, timeout: float) -> None:
        """Wait until ``/readyz`` answers 200: libvirt connected and a poll succeeded."""
        wait_until(
            lambda: self.get("/readyz")[0] == 200,
            timeout=timeout,
            interval=0.05,
            what="/readyz 200",
            detail=self.log,
        )

    def get(self, path: str) -> tuple[int, str]:
        """Plain-HTTP GET: status and body (status 0 when the connection fails)."""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as reply:  # noqa: S310
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()
        except OSError:
            return 0, ""

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

    def log(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self._log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


# -- the whole chain ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Monitoring:
    """guestload on a libvirt URI, Prometheus (with the project's rules) scraping it, and
    Alertmanager delivering Prometheus's alerts to ``webhook``."""

    exporter: Exporter
    prometheus: Prometheus
    alertmanager: Alertmanager
    webhook: WebhookReceiver

    @classmethod
    def start(
        cls,
        *,
        libvirt_uri: str,
        node: str,
        workdir: Path,
        registry: ProcessRegistry,
        webhook: WebhookReceiver,
        exporter_args: Sequence[str] = (),
    ) -> Monitoring:
        """Start all three and wait until Prometheus has scraped guestload.

        ``exporter_args`` are extra ``guestload serve`` flags.
        """
        exporter = Exporter(
            libvirt_uri=libvirt_uri,
            node=node,
            workdir=workdir,
            registry=registry,
            extra_args=exporter_args,
        )
        alertmanager = Alertmanager(workdir=workdir, webhook_url=webhook.url, registry=registry)
        prometheus = Prometheus(
            workdir=workdir,
            registry=registry,
            targets=[exporter.address],
            rule_files=[PROJECT_RULE_FILE],
            alertmanager_url=alertmanager.url,
        )
        exporter.start()
        alertmanager.start()
        prometheus.start()
        wait_until(
            lambda: prometheus.targets_health() == ["up"],
            timeout=30.0,
            what="Prometheus scraping guestload",
        )
        return cls(
            exporter=exporter, prometheus=prometheus, alertmanager=alertmanager, webhook=webhook
        )
