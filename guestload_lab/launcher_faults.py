"""Launcher faults at node density, judged from the exporter's ``/metrics`` alone.

A share of a node's :class:`~guestload_lab.launchers.LauncherPod` s is hung (SIGSTOP), resumed,
killed, restarted and deleted in turn while the rest keep answering; a :class:`MetricsWatch`
scrapes the exporter all along. :func:`run_fault_phases` then checks the goals of node mode:

- no healthy VM's series is late by more than one interval: between two polls that publish
  it, at most two intervals pass (``guestload_last_poll_success_timestamp_seconds``);
- no healthy VM's series goes missing from any scrape;
- a hung launcher's ``guestload_libvirt_socket_up`` is 0 within two intervals;
- a deleted launcher's series (its VM's and its socket's) are gone within one interval (plus
  the watch's own scrape step, the resolution of the measurement).
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from guestload_lab.launchers import LauncherPod

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_POLL_FINISHED = "guestload_last_poll_success_timestamp_seconds"


@dataclass(frozen=True, slots=True)
class Scrape:
    """What one scrape showed, at ``at`` (monotonic seconds)."""

    at: float
    poll_finished: float
    """Unix time at which the published poll finished."""
    vms: frozenset[str]
    """``namespace/name`` of every VM with a ``guestload_domain_info`` series."""
    sockets: Mapping[str, float]
    """``guestload_libvirt_socket_up`` by pod UID."""


def parse_scrape(text: str, *, at: float) -> Scrape:
    """The few series the goals need, read line by line (cheaper than a full parse)."""
    poll_finished = 0.0
    vms: set[str] = set()
    sockets: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("guestload_domain_info{"):
            labels = dict(_LABEL.findall(line))
            vms.add(f"{labels.get('namespace', '')}/{labels.get('name', '')}")
        elif line.startswith("guestload_libvirt_socket_up{"):
            labels = dict(_LABEL.findall(line))
            sockets[labels.get("pod_uid", "")] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(_POLL_FINISHED + " "):
            poll_finished = float(line.rsplit(" ", 1)[1])
    return Scrape(at=at, poll_finished=poll_finished, vms=frozenset(vms), sockets=sockets)


class MetricsWatch:
    """Scrapes ``read()`` every ``step`` seconds on a thread of its own; failed reads are
    skipped."""

    def __init__(self, read: Callable[[], str], *, step: float) -> None:
        self.step = step
        self._read = read
        self._lock = threading.Lock()
        self._scrapes: list[Scrape] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def scrapes(self, since: float = 0.0) -> list[Scrape]:
        with self._lock:
            return [scrape for scrape in self._scrapes if scrape.at >= since]

    def wait_for(self, holds: Callable[[Scrape], bool], *, since: float, timeout: float) -> float:
        """Seconds from ``since`` to the first scrape after it where ``holds``; ``inf`` when
        none does within ``timeout``."""
        deadline = since + timeout
        seen = 0
        while True:
            scrapes = self.scrapes(since)
            for scrape in scrapes[seen:]:
                if holds(scrape):
                    return scrape.at - since
            seen = len(scrapes)
            if time.monotonic() > deadline:
                return float("inf")
            time.sleep(self.step / 2)

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                text = self._read()
            except OSError:
                text = None
            if text is not None:
                scrape = parse_scrape(text, at=at)
                with self._lock:
                    self._scrapes.append(scrape)
            self._stop.wait(max(0.0, at + self.step - time.monotonic()))


def vm_name(pod: LauncherPod) -> str:
    return f"{pod.namespace}/{pod.vmi}"


def healthy_series(scrapes: Sequence[Scrape], healthy: Sequence[LauncherPod]) -> dict[str, Any]:
    """The healthy VMs' longest wait between two polls that published them, and the scrapes
    in which any of them was missing."""
    names = {vm_name(pod) for pod in healthy}
    missing = 0
    published: list[float] = []
    for scrape in scrapes:
        if not names <= scrape.vms:
            missing += 1
            continue
        if not published or scrape.poll_finished != published[-1]:
            published.append(scrape.poll_finished)
    gaps = [later - earlier for earlier, later in itertools.pairwise(published)]
    return {
        "scrapes": len(scrapes),
        "scrapes_missing_a_healthy_vm": missing,
        "polls_published": len(published),
        "max_gap_seconds": max(gaps, default=float("inf")),
    }


def _in_parallel(action: Callable[[LauncherPod], None], pods: Sequence[LauncherPod]) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(action, pods))


def run_fault_phases(
    watch: MetricsWatch,
    *,
    faulty: Sequence[LauncherPod],
    healthy: Sequence[LauncherPod],
    interval: float,
    hold_intervals: float = 3.0,
) -> dict[str, Any]:
    """Hang, resume, kill, restart and delete ``faulty`` in turn; the figures and the goals.

    Each fault is held for ``hold_intervals`` intervals. Returns the phases' figures and
    ``goals``: name -> (passed, measured, limit).
    """
    uids = {pod.pod_dir.name for pod in faulty}
    faulty_vms = {vm_name(pod) for pod in faulty}
    started = time.monotonic()
    wait = interval * 20

    def all_sockets(value: float) -> Callable[[Scrape], bool]:
        return lambda scrape: all(scrape.sockets.get(uid) == value for uid in uids)

    hung_at = time.monotonic()
    _in_parallel(LauncherPod.hang, faulty)
    hung_seen = watch.wait_for(all_sockets(0.0), since=hung_at, timeout=wait)
    time.sleep(max(0.0, hung_at + hold_intervals * interval - time.monotonic()))
    resumed_at = time.monotonic()
    _in_parallel(LauncherPod.resume, faulty)
    resumed_seen = watch.wait_for(
        lambda s: all_sockets(1.0)(s) and faulty_vms <= s.vms, since=resumed_at, timeout=wait
    )

    killed_at = time.monotonic()
    _in_parallel(LauncherPod.crash, faulty)
    killed_seen = watch.wait_for(all_sockets(0.0), since=killed_at, timeout=wait)
    time.sleep(max(0.0, killed_at + hold_intervals * interval - time.monotonic()))
    restarted_at = time.monotonic()
    _in_parallel(LauncherPod.start, faulty)
    restarted_seen = watch.wait_for(
        lambda s: all_sockets(1.0)(s) and faulty_vms <= s.vms, since=restarted_at, timeout=90
    )

    deleted_at = time.monotonic()
    _in_parallel(LauncherPod.delete, faulty)
    deleted_seen = watch.wait_for(
        lambda s: not (faulty_vms & s.vms) and not (uids & set(s.sockets)),
        since=deleted_at,
        timeout=wait,
    )
    # One more interval, so the healthy VMs' last gap is measured after the last fault.
    time.sleep(interval * 1.5)

    series = healthy_series(watch.scrapes(started), healthy)
    goals = {
        "healthy_late_at_most_one_interval": (
            series["max_gap_seconds"] <= 2 * interval,
            series["max_gap_seconds"],
            2 * interval,
        ),
        "healthy_never_missing": (
            series["scrapes_missing_a_healthy_vm"] == 0,
            series["scrapes_missing_a_healthy_vm"],
            0,
        ),
        "hung_socket_down_within_two_intervals": (
            hung_seen <= 2 * interval,
            hung_seen,
            2 * interval,
        ),
        "deleted_series_gone_within_one_interval": (
            deleted_seen <= interval + watch.step,
            deleted_seen,
            interval + watch.step,
        ),
    }
    return {
        "faulty": len(faulty),
        "healthy": len(healthy),
        "interval_seconds": interval,
        "scrape_step_seconds": watch.step,
        "seconds_until": {
            "hung_sockets_down": hung_seen,
            "resumed_back": resumed_seen,
            "killed_sockets_down": killed_seen,
            "restarted_back": restarted_seen,
            "deleted_series_gone": deleted_seen,
        },
        "healthy_series": series,
        "goals": {
            name: {"passed": passed, "measured": measured, "limit": limit}
            for name, (passed, measured, limit) in goals.items()
        },
    }
