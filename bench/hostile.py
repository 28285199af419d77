"""Availability under hostile and busy clients: do normal scrapes still get through in time?

Each scenario starts ``guestload serve --source simulated`` afresh and scrapes ``/metrics``
once every ``--interval`` (gzip, a new connection each time, as Prometheus does) from this
process, while a load process (asyncio, so it needs no thread per client) does one of:

- ``slow-plain``: ``--slow`` clients send a request line, then one header line a second and
  never finish; each re-opens when cut, and after 9 s anyway;
- ``slow-tls``: the same over TLS with basic authentication, each slow client sending one
  ``0x16`` byte (the start of a TLS record) and nothing more;
- ``burst``: every 2 s, ``--burst`` simultaneous connections each ask for ``/metrics``; each
  must be answered (200) within 1 s;
- ``loops``: ``--loops`` clients scrape ``/metrics`` back to back at ``--vms`` simulated VMs.

A normal scrape counts as on time when it gets 200 and its last byte within 1 s.

    python -m bench.hostile --seconds 20 --slow 30 --burst 64 --loops 64 --vms 10000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import multiprocessing
import ssl
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import bcrypt

from bench.common import (
    RESULTS_DIR,
    SimulatedExporter,
    exit_on_sigterm,
    format_table,
    summary,
    write_results,
)
from guestload_lab.processes import ProcessRegistry

SCENARIOS = ("slow-plain", "slow-tls", "burst", "loops")
ON_TIME_SECONDS = 1.0
CLIENT_TIMEOUT_SECONDS = 5.0
SLOW_REOPEN_SECONDS = 9.0
BURST_EVERY_SECONDS = 2.0
SLOW_PAUSE_SECONDS = 0.2
_USER, _PASSWORD = "prometheus", "bench-password"
_GET = b"GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept-Encoding: gzip\r\n"


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to reach the exporter."""

    port: int
    tls: bool
    authorization: str = ""

    def request(self) -> bytes:
        auth = f"Authorization: {self.authorization}\r\n".encode() if self.authorization else b""
        return _GET + auth + b"Connection: close\r\n\r\n"


# -- the load process -----------------------------------------------------------------------


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _get(target: Target) -> tuple[int, float]:
    """One scrape on a new connection: the status (0: no answer) and seconds to the last byte."""
    started = time.monotonic()
    writer = None
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", target.port, ssl=_client_context() if target.tls else None
            )
            writer.write(target.request())
            await writer.drain()
            answer = await reader.read()
        parts = answer.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except (OSError, TimeoutError, ssl.SSLError):
        status = 0
    finally:
        if writer is not None:
            writer.close()
    return status, time.monotonic() - started


async def _slow_client(target: Target, stop: float, counts: Counter[str]) -> None:
    """Never finishes a request; re-opens when cut, and after a while anyway."""
    while time.monotonic() < stop:
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
            counts["opened"] += 1
            opened = time.monotonic()
            if target.tls:
                writer.write(b"\x16")
            else:
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n")
            while time.monotonic() < min(stop, opened + SLOW_REOPEN_SECONDS):
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                except TimeoutError:
                    if not target.tls:
                        writer.write(b"X-Slow: 1\r\n")
                    continue
                counts["answered" if data else "cut"] += 1
                await asyncio.sleep(SLOW_PAUSE_SECONDS)  # no hot loop when cut at once
                break
        except OSError:
            counts["failed"] += 1
            await asyncio.sleep(0.1)
        finally:
            if writer is not None:
                writer.close()


async def _bursts(target: Target, size: int, stop: float, result: dict[str, Any]) -> None:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    while time.monotonic() + BURST_EVERY_SECONDS < stop:
        started = time.monotonic()
        for status, seconds in await asyncio.gather(*(_get(target) for _ in range(size))):
            statuses[status] += 1
            latencies.append(seconds if status == 200 else float("inf"))
        await asyncio.sleep(max(0.0, started + BURST_EVERY_SECONDS - time.monotonic()))
    result["burst_connections"] = len(latencies)
    result["burst_on_time"] = sum(1 for s in latencies if s <= ON_TIME_SECONDS)
    result["burst_max_seconds"] = max(latencies, default=0.0)
    result["burst_statuses"] = {str(k): v for k, v in statuses.items()}


async def _scrape_loop(target: Target, stop: float, statuses: Counter[int]) -> None:
    while time.monotonic() < stop:
        status, _seconds = await _get(target)
        statuses[status] += 1
        if status != 200:
            await asyncio.sleep(0.01)


async def _load(scenario: str, target: Target, options: dict[str, int], seconds: float) -> Any:
    stop = time.monotonic() + seconds
    result: dict[str, Any] = {}
    if scenario.startswith("slow"):
        counts: Counter[str] = Counter()
        await asyncio.gather(*(_slow_client(target, stop, counts) for _ in range(options["slow"])))
        result["slow_clients"] = dict(counts)
    elif scenario == "burst":
        await _bursts(target, options["burst"], stop, result)
    elif scenario == "loops":
        statuses: Counter[int] = Counter()
        await asyncio.gather(
            *(_scrape_loop(target, stop, statuses) for _ in range(options["loops"]))
        )
        result["loop_statuses"] = {str(k): v for k, v in statuses.items()}
        result["loop_scrapes_per_second"] = statuses[200] / seconds
    return result


def _load_process(
    pipe: Connection, scenario: str, target: Target, options: dict[str, int], seconds: float
) -> None:
    pipe.send(asyncio.run(_load(scenario, target, options, seconds)))


# -- normal scrapes -------------------------------------------------------------------------


def _normal_scrape(target: Target) -> float:
    """Seconds until the last byte of a 200 answer; infinity for anything else."""
    if target.tls:
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", target.port, timeout=CLIENT_TIMEOUT_SECONDS, context=_client_context()
        )
    else:
        connection = http.client.HTTPConnection(
            "127.0.0.1", target.port, timeout=CLIENT_TIMEOUT_SECONDS
        )
    headers = {"Accept-Encoding": "gzip"}
    if target.authorization:
        headers["Authorization"] = target.authorization
    started = time.monotonic()
    try:
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        response.read()
        ok = response.status == 200
    except (OSError, http.client.HTTPException):
        ok = False
    finally:
        connection.close()
    return time.monotonic() - started if ok else float("inf")


def _normal_scrapes(target: Target, seconds: float, interval: float) -> list[float]:
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    while (started := time.monotonic()) < stop:
        latencies.append(_normal_scrape(target))
        time.sleep(max(0.0, started + interval - time.monotonic()))
    return latencies


# -- one scenario ---------------------------------------------------------------------------


def _tls_config(workdir: Path) -> Path:
    """A self-signed certificate and a web config with TLS and one basic-auth user."""
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-keyout", str(workdir / "server.key"), "-out", str(workdir / "server.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    hashed = bcrypt.hashpw(_PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    config = workdir / "web.yml"
    config.write_text(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"
        f"basic_auth_users:\n  {_USER}: {hashed}\n"
    )
    return config


def run_scenario(
    scenario: str, *, seconds: float, interval: float, vms: int, options: dict[str, int]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp, ProcessRegistry() as registry:
        workdir = Path(tmp)
        extra: list[str] = []
        tls = scenario == "slow-tls"
        authorization = ""
        if tls:
            extra = ["--web.config.file", str(_tls_config(workdir))]
            authorization = "Basic " + base64.b64encode(f"{_USER}:{_PASSWORD}".encode()).decode()
        exporter = SimulatedExporter(
            registry=registry,
            workdir=workdir,
            vms=vms if scenario == "loops" else min(vms, 100),
            interval="30s",
            extra_args=extra,
        )
        target = Target(port=exporter.port, tls=tls, authorization=authorization)
        read: Callable[[], str] | None = None
        if tls:
            read = lambda: _read_tls(target)  # noqa: E731 - a one-line reader
        exporter.start(scrape_text=read)
        receiver, sender = multiprocessing.get_context("spawn").Pipe(duplex=False)
        load = multiprocessing.get_context("spawn").Process(
            target=_load_process, args=(sender, scenario, target, options, seconds + 1.0)
        )
        load.start()
        time.sleep(1.0)  # the load is on before the first normal scrape
        latencies = _normal_scrapes(target, seconds, interval)
        load_result: dict[str, Any] = receiver.recv() if receiver.poll(60.0) else {}
        load.join(timeout=10.0)
        if load.is_alive():
            load.kill()
        log_tail = (workdir / "guestload.log").read_text(errors="replace").splitlines()[-5:]
        exporter.stop()
    on_time = sum(1 for s in latencies if s <= ON_TIME_SECONDS)
    answered = [s for s in latencies if s != float("inf")]
    return {
        "scenario": scenario,
        "normal_scrapes": len(latencies),
        "normal_on_time": on_time,
        "normal_on_time_share": on_time / len(latencies) if latencies else 0.0,
        "normal_seconds": summary(answered) if answered else None,
        "normal_failed": len(latencies) - len(answered),
        "load": load_result,
        "exporter_log_tail": log_tail,
    }


def _read_tls(target: Target) -> str:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", target.port, timeout=CLIENT_TIMEOUT_SECONDS, context=_client_context()
    )
    try:
        connection.request("GET", "/metrics", headers={"Authorization": target.authorization})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"status {response.status}")
        return body.decode()
    finally:
        connection.close()


def _load_figure(result: dict[str, Any]) -> str:
    load = result["load"]
    if "slow_clients" in load:
        counts = load["slow_clients"]
        return (
            f"slow connections opened {counts.get('opened', 0)}, "
            f"answered {counts.get('answered', 0)}, cut {counts.get('cut', 0)}"
        )
    if "burst_connections" in load:
        return (
            f"burst answers 200 within 1 s: {load['burst_on_time']}/{load['burst_connections']}"
            f", statuses {load['burst_statuses']}"
        )
    if "loop_statuses" in load:
        return (
            f"loop scrapes/s {load['loop_scrapes_per_second']:.0f}, "
            f"statuses {load['loop_statuses']}"
        )
    return "-"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=0.5, help="between normal scrapes")
    parser.add_argument("--slow", type=int, default=30)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--loops", type=int, default=64)
    parser.add_argument("--vms", type=int, default=10000, help="for the loops scenario")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "hostile.json")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    options = {"slow": args.slow, "burst": args.burst, "loops": args.loops}
    results = []
    for scenario in args.scenarios.split(","):
        if scenario not in SCENARIOS:
            parser.error(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
        results.append(
            run_scenario(
                scenario,
                seconds=args.seconds,
                interval=args.interval,
                vms=args.vms,
                options=options,
            )
        )
    rows = [
        (
            r["scenario"],
            r["normal_scrapes"],
            f"{r['normal_on_time_share']:.0%}",
            r["normal_seconds"]["p50"] if r["normal_seconds"] else "-",
            r["normal_seconds"]["max"] if r["normal_seconds"] else "-",
            r["normal_failed"],
            _load_figure(r),
        )
        for r in results
    ]
    headers = ("scenario", "normal scrapes", "within 1 s", "p50 s", "max s", "failed", "load")
    print(format_table(headers, rows))
    write_results(args.out, {"results": results, "options": vars(args) | {"out": str(args.out)}})
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
