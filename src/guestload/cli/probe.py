"""``guestload probe``: one poll now, printed for a person (table) or a program (JSON)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TextIO

from guestload.model import DomainSample, Snapshot
from guestload.polling.poller import Poller
from guestload.queries.load import LOAD, GuestLoad
from guestload.sources.protocol import SourceUnavailableError

_COLUMNS = ("NAMESPACE", "NAME", "NODE", "DOMAIN", "VCPUS", "LOAD1", "LOAD5", "LOAD15", "AGENT")


def _load(domain: DomainSample) -> GuestLoad | None:
    reading = domain.readings.get(LOAD.name)
    value = reading.value if reading is not None else None
    return value if isinstance(value, GuestLoad) else None


def _load_state(domain: DomainSample) -> str:
    state = domain.state(LOAD.name)
    return state.value if state is not None else "-"


def _row(domain: DomainSample) -> tuple[str, ...]:
    load = _load(domain)
    values = (
        ("-", "-", "-")
        if load is None
        else tuple(f"{v:.2f}" for v in (load.one, load.five, load.fifteen))
    )
    return (
        domain.identity.namespace,
        domain.identity.name,
        domain.identity.node,
        domain.domain_name,
        "-" if domain.vcpu_count is None else str(domain.vcpu_count),
        *values,
        _load_state(domain),
    )


def format_table(snapshot: Snapshot) -> str:
    rows = [_COLUMNS, *(_row(d) for d in sorted(snapshot.domains, key=lambda d: d.domain_name))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    if not snapshot.domains:
        lines.append("(no running domains)")
    return "\n".join(lines) + "\n"


def format_json(snapshot: Snapshot) -> str:
    domains = [
        {
            "namespace": d.identity.namespace,
            "name": d.identity.name,
            "node": d.identity.node,
            "domain": d.domain_name,
            "uuid": d.uuid,
            "vcpus": d.vcpu_count,
            "load": None
            if (load := _load(d)) is None
            else {"1m": load.one, "5m": load.five, "15m": load.fifteen},
            "agent_state": _load_state(d),
            "agent_states": {name: reading.state.value for name, reading in d.readings.items()},
        }
        for d in sorted(snapshot.domains, key=lambda d: d.domain_name)
    ]
    # "libvirt_up" is the key scripts read (public, like guestload_libvirt_up): whether the
    # hypervisor connection is up, whatever the source.
    return json.dumps({"libvirt_up": snapshot.source_up, "domains": domains}, indent=2) + "\n"


def print_probe(
    poller: Poller,
    *,
    advice: Callable[[str], str],
    output: str,
    stream: TextIO | None = None,
    errors: TextIO | None = None,
) -> int:
    """Connect ``poller``'s source, poll it once and print what it found; 0 when reached.

    The poll keeps the connection made first: the source is connected once.

    When the hypervisor cannot be reached, only the error and what to check (``advice`` of the
    error, the source's :meth:`~guestload.sources.protocol.Source.unreachable_advice`) are
    printed, on ``errors``, and the answer is 1: no table, which would read as "connected, no
    VMs".
    ``stream`` and ``errors`` default to the standard streams of the moment of the call.
    """
    try:
        try:
            poller.connect()
        except SourceUnavailableError as error:
            (sys.stderr if errors is None else errors).write(
                f"guestload: {error}\n{advice(str(error))}"
            )
            return 1
        snapshot = poller.poll()
    finally:
        poller.close()
    if not snapshot.source_up:  # lost between the connection and the listing: logged
        return 1
    (sys.stdout if stream is None else stream).write(
        format_json(snapshot) if output == "json" else format_table(snapshot)
    )
    return 0
