"""Scrape cost: guestload serving N simulated VMs vs a Pushgateway holding the same samples.

For each N, guestload (``--source simulated``) and Debian's ``prometheus-pushgateway`` (no
persistence, loopback) are started fresh. guestload's own families (its exposition without the
``process_*``/``python_*`` families) are pushed to the Pushgateway, so both serve the same
metric names and label sets (the Pushgateway adds its grouping labels ``job`` and
``instance``). Then both are scraped in turn, plain and gzip, each scrape on a new
connection, timed until the last byte; finally each process's RSS is read.

    python -m bench.scrape --vms 100,1000,10000 --scrapes 30
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    SimulatedExporter,
    exit_on_sigterm,
    format_table,
    memory_bytes,
    scrape,
    summary,
    write_results,
)
from guestload_lab.processes import ProcessRegistry
from guestload_lab.services import free_port

PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
GROUPING_PATH = "/metrics/job/guestload/instance/bench-node"
_OWN_FAMILY_PREFIXES = ("kubevirt_vmi_", "guestload_")


class Pushgateway:
    """Debian's Pushgateway on a loopback port, without a persistence file."""

    def __init__(self, *, registry: ProcessRegistry, workdir: Path) -> None:
        self.port = free_port()
        self._registry = registry
        self._log = workdir / "pushgateway.log"
        self._process: Any = None

    @property
    def pid(self) -> int:
        return int(self._process.pid)

    def start(self, timeout: float = 30.0) -> None:
        self._process = self._registry.spawn(
            [
                PUSHGATEWAY,
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--persistence.file=",
                "--log.level=warn",
            ],
            log_path=self._log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, RuntimeError):
                scrape("127.0.0.1", self.port, "/-/ready", gzip=False)
                return
            time.sleep(0.1)
        raise TimeoutError(f"pushgateway not ready: {self._log.read_text(errors='replace')}")

    def push(self, body: bytes) -> None:
        """Replace the group's metrics with ``body`` (text format)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.request(
                "PUT",
                GROUPING_PATH,
                body=body,
                headers={"Content-Type": "text/plain; version=0.0.4"},
            )
            response = connection.getresponse()
            answer = response.read()
        finally:
            connection.close()
        if response.status not in (200, 202):
            raise RuntimeError(f"push refused: {response.status} {answer[:500]!r}")

    def stop(self) -> None:
        if self._process is not None:
            self._registry.stop(self._process)
            self._process = None


def own_families(exposition: str) -> str:
    """The exposition without the process's own families (the Pushgateway has its own)."""
    kept: list[str] = []
    keep = False
    for line in exposition.splitlines():
        if line.startswith("# HELP "):
            keep = line.split()[2].startswith(_OWN_FAMILY_PREFIXES)
        if keep:
            kept.append(line)
    return "\n".join(kept) + "\n"


def count_samples(exposition: str, *, prefixes: tuple[str, ...] = _OWN_FAMILY_PREFIXES) -> int:
    return sum(
        1
        for line in exposition.splitlines()
        if line and line[0] != "#" and line.startswith(prefixes)
    )


def measure(*, vms: int, scrapes: int, vcpu: bool, workdir: Path) -> dict[str, Any]:
    """Start both servers for ``vms`` VMs, push, scrape in turn; timings, sizes and RSS."""
    with ProcessRegistry() as registry:
        exporter = SimulatedExporter(
            registry=registry,
            workdir=workdir / f"guestload-{vms}",
            vms=vms,
            interval="120s",
            extra_args=() if vcpu else ("--no-collector.vcpu",),
        )
        exporter.workdir.mkdir(parents=True, exist_ok=True)
        exporter.start()
        gateway = Pushgateway(registry=registry, workdir=workdir)
        gateway.start()
        pushed = own_families(exporter.scrape_text())
        gateway.push(pushed.encode())
        targets = {"guestload": exporter.port, "pushgateway": gateway.port}
        check = scrape("127.0.0.1", gateway.port, "/metrics", gzip=False).body.decode()
        samples = {"guestload": count_samples(pushed), "pushgateway": count_samples(check)}
        if samples["guestload"] != samples["pushgateway"]:
            raise RuntimeError(f"the Pushgateway holds other samples than guestload: {samples}")
        times: dict[str, list[float]] = {f"{t}_{m}": [] for t in targets for m in ("plain", "gzip")}
        sizes: dict[str, int] = {}
        for round_number in range(scrapes):
            order = list(targets.items())
            if round_number % 2:
                order.reverse()
            for name, port in order:
                for gzip in (False, True):
                    result = scrape("127.0.0.1", port, "/metrics", gzip=gzip)
                    key = f"{name}_{'gzip' if gzip else 'plain'}"
                    times[key].append(result.seconds)
                    sizes[key] = result.body_bytes
        memory = {"guestload": memory_bytes(exporter.pid), "pushgateway": memory_bytes(gateway.pid)}
        exporter.stop()
        gateway.stop()
    stats = {key: summary(values) for key, values in times.items()}
    return {
        "vms": vms,
        "vcpu_collector": vcpu,
        "samples": samples["guestload"],
        "body_bytes": sizes,
        "seconds": stats,
        "ratio_p50": {
            mode: stats[f"guestload_{mode}"]["p50"] / stats[f"pushgateway_{mode}"]["p50"]
            for mode in ("plain", "gzip")
        },
        "memory_bytes": memory,
    }


def table(results: list[dict[str, Any]]) -> str:
    headers = [
        "VMs",
        "samples",
        "mode",
        "guestload p50 ms",
        "p90 ms",
        "pushgateway p50 ms",
        "p90 ms ",
        "ratio p50",
        "body KiB",
    ]
    rows: list[list[object]] = []
    for result in results:
        for mode in ("plain", "gzip"):
            ours = result["seconds"][f"guestload_{mode}"]
            theirs = result["seconds"][f"pushgateway_{mode}"]
            rows.append(
                [
                    result["vms"],
                    result["samples"],
                    mode,
                    ours["p50"] * 1000,
                    ours["p90"] * 1000,
                    theirs["p50"] * 1000,
                    theirs["p90"] * 1000,
                    result["ratio_p50"][mode],
                    result["body_bytes"][f"guestload_{mode}"] / 1024,
                ]
            )
    memory_rows = [
        [
            r["vms"],
            r["memory_bytes"]["guestload"]["rss"] / 2**20,
            r["memory_bytes"]["pushgateway"]["rss"] / 2**20,
        ]
        for r in results
    ]
    return (
        format_table(headers, rows)
        + "\n\n"
        + format_table(["VMs", "guestload RSS MiB", "pushgateway RSS MiB"], memory_rows)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scrape", description=__doc__)
    parser.add_argument("--vms", default="100,1000,10000", help="comma-separated VM counts")
    parser.add_argument("--scrapes", type=int, default=30, help="scrapes per server and mode")
    parser.add_argument(
        "--vcpu",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the vCPU counters too (--no-vcpu: load gauges and agent state only)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "scrape.json")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    results = []
    with tempfile.TemporaryDirectory(prefix="guestload-bench-scrape-") as workdir:
        for vms in (int(v) for v in args.vms.split(",")):
            results.append(
                measure(vms=vms, scrapes=args.scrapes, vcpu=args.vcpu, workdir=Path(workdir))
            )
            print(f"measured {vms} VMs", flush=True)
    print(table(results))
    write_results(args.out, {"benchmark": "scrape", "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
