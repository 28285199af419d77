"""The demo's live view: one line per VM with its load, CPU shares, cause and alerts."""

from __future__ import annotations

from guestload_lab.demo import VmRow, render


def _view(*rows: VmRow) -> list[str]:
    text = render(
        rows, urls={"guestload": "http://127.0.0.1:9977/metrics"}, notifications=2, uptime=5
    )
    return text.splitlines()


def test_the_header_names_the_shares_and_the_cause_before_the_agent_state() -> None:
    header = next(line for line in _view() if line.startswith("VM "))
    assert header.split()[7:12] == ["busy", "iowait", "cause", "agent", "firing"]


def test_a_stalled_vm_shows_its_shares_its_cause_and_its_alert() -> None:
    stalled = VmRow(
        namespace="demo",
        name="io-stalled",
        agent_state="ok",
        vcpus=1,
        load=(11.8, 6.2, 2.5),
        queue=10.8,
        busy=0.02,
        iowait=0.96,
        causes=("io",),
        alerts=("GuestIOStall",),
    )
    (line,) = [line for line in _view(stalled) if line.startswith("demo/io-stalled")]
    assert line.split() == [
        "demo/io-stalled", "1", "11.80", "6.20", "2.50", "10.80", "0.02", "0.96", "io", "ok",
        "GuestIOStall",
    ]  # fmt: skip


def test_a_vm_without_an_agent_shows_dashes_for_everything_it_cannot_know() -> None:
    silent = VmRow(namespace="libvirt", name="no-agent", agent_state="not_configured", vcpus=1)
    (line,) = [line for line in _view(silent) if line.startswith("libvirt/no-agent")]
    assert line.split() == ["libvirt/no-agent", "1", *["-"] * 7, "not_configured", "-"]


def test_two_causes_are_listed_together() -> None:
    mixed = VmRow(namespace="demo", name="both", agent_state="ok", causes=("host", "io"))
    (line,) = [line for line in _view(mixed) if line.startswith("demo/both")]
    assert " host,io " in line
