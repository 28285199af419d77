"""The lab's Windows-like guest agent, built as the image builds it and run over stdin/stdout."""

from __future__ import annotations

import base64
import json
import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guestload_lab.windows_agent import OS_ID, UNSUPPORTED_ERROR, build_windows_agent

PERIOD_MS = 40
"""A short sampling period: the agent's -t option (5000 ms on Windows)."""
FACTOR_1M = math.exp(-5 / 60)
FACTOR_5M = math.exp(-5 / 300)


def _proc_stat(cpus: int, running: int) -> str:
    lines = ["cpu  10 0 10 100 0 0 0 0 0 0"]
    lines += [f"cpu{n} 10 0 10 100 0 0 0 0 0 0" for n in range(cpus)]
    lines += ["intr 0", f"procs_running {running}", "procs_blocked 3"]
    return "\n".join(lines) + "\n"


class Agent:
    """The agent as a child process; requests in on stdin, replies out on stdout."""

    def __init__(self, binary: Path, proc_stat: Path, run_dir: Path) -> None:
        self.proc_stat = proc_stat
        self.process = subprocess.Popen(
            [
                *(str(binary), "-m", "virtio-serial", "-p", "-", "-s", str(proc_stat)),
                *("-t", str(PERIOD_MS), "-r", str(run_dir)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def send(self, raw: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(raw)
        self.process.stdin.flush()

    def line(self) -> bytes:
        assert self.process.stdout is not None
        return self.process.stdout.readline()

    def reply(self, raw: bytes) -> dict[str, Any]:
        self.send(raw)
        answer: dict[str, Any] = json.loads(self.line())
        return answer

    def call(self, command: str, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        answer = self.reply(json.dumps(request).encode() + b"\n")
        assert "return" in answer, answer
        return answer["return"]

    def close(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_windows_agent(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture
def agent(binary: Path, tmp_path: Path) -> Iterator[Agent]:
    proc_stat = tmp_path / "stat"
    proc_stat.write_text(_proc_stat(cpus=1, running=1))
    running = Agent(binary, proc_stat, tmp_path)
    try:
        yield running
    finally:
        running.process.kill()
        running.process.wait()


def test_sync_echoes_libvirts_id_and_the_delimited_form_leads_with_0xff(agent: Agent) -> None:
    # libvirt sends exactly this, with milliseconds since the epoch as the id.
    assert agent.reply(b'{"execute":"guest-sync", "arguments":{"id":1765000000123}}\n') == {
        "return": 1765000000123
    }
    agent.send(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":42}}')
    line = agent.line()
    assert line[:1] == b"\xff"
    assert json.loads(line[1:]) == {"return": 42}
    assert agent.reply(b'{"execute":"guest-ping","id":"req-1"}\n') == {"return": {}, "id": "req-1"}


def test_osinfo_and_info_answer_as_the_windows_agent(agent: Agent) -> None:
    osinfo = agent.call("guest-get-osinfo")
    assert osinfo == {
        "id": OS_ID,
        "name": "Microsoft Windows",
        "pretty-name": "Windows Server 2022 Datacenter",
        "version": "Microsoft Windows Server 2022",
        "version-id": "2022",
        "kernel-version": "10.0",
        "kernel-release": "20348",
        "machine": "x86_64",
        "variant": "server",
        "variant-id": "server",
    }
    names = {entry["name"] for entry in agent.call("guest-info")["supported_commands"]}
    assert {"guest-get-load", "guest-get-cpustats", "guest-exec", "guest-sync"} <= names


@pytest.mark.parametrize("command", ["guest-get-cpustats", "guest-get-diskstats"])
def test_cpu_and_disk_stats_get_the_windows_unsupported_error(agent: Agent, command: str) -> None:
    answer = agent.reply(json.dumps({"execute": command}).encode())
    assert answer == {"error": {"class": "GenericError", "desc": UNSUPPORTED_ERROR}}


def test_unknown_commands_are_not_found(agent: Agent) -> None:
    answer = agent.reply(b'{"execute":"guest-get-vcpus"}')
    assert answer["error"]["class"] == "CommandNotFound"
    assert answer["error"]["desc"] == "The command guest-get-vcpus has not been found"


@pytest.mark.parametrize(
    "garbage",
    [
        b"nonsense\n",
        b"[1, 2]\n",
        b'{"execute": 7}\n',
        b'{"arguments": {}}\n',
        b'{"execute": "guest-sync", "arguments": {"id": "x"}}\n',
        b'{"execute": "guest-exec", "arguments": {"arg": 3}}\n',
        b'{"execute": "guest-exec-status", "arguments": {"pid": 1.5}}\n',
        b'{"execute": "guest-ping" "x"}\n',
        b'{"execute": "\\ud800\\u0000"}\n',
        b"[" * 5000 + b"]" * 5000 + b"\n",
        b'{"execute": "' + b"a" * 300_000 + b'"}\n',
        b'{"execute": "guest-\xc3\x28"}\n',
    ],
)
def test_malformed_input_gets_an_error_and_the_agent_goes_on(agent: Agent, garbage: bytes) -> None:
    agent.send(garbage + b'\n{"execute":"guest-ping","id":"after"}\n')
    answers: list[dict[str, Any]] = []
    while not answers or answers[-1].get("id") != "after":
        answers.append(json.loads(agent.line()))
    *errors, ping = answers
    assert ping == {"return": {}, "id": "after"}
    assert errors
    assert all("error" in answer for answer in errors)


def test_0xff_drops_a_partial_request(agent: Agent) -> None:
    agent.send(b'{"execute": "guest-get-osinfo", "argu\xff')
    assert agent.reply(b'{"execute":"guest-sync","arguments":{"id":7}}') == {"return": 7}


def test_load_starts_at_zero_and_averages_the_waiting_threads(agent: Agent) -> None:
    # One CPU, this agent and 8 busy threads running: one thread runs, 7 wait.
    agent.proc_stat.write_text(_proc_stat(cpus=1, running=9))
    first = agent.call("guest-get-load")
    assert first == {"load1m": 0, "load5m": 0, "load15m": 0}
    time.sleep(30 * PERIOD_MS / 1000)
    load = agent.call("guest-get-load")
    assert 0 < load["load15m"] < load["load5m"] < load["load1m"] < 7
    # The samples taken so far, from the 1-minute average; the 5-minute one must agree.
    samples = math.log(1 - load["load1m"] / 7) / math.log(FACTOR_1M)
    assert samples >= 5
    assert load["load5m"] == pytest.approx(7 * (1 - FACTOR_5M**samples), rel=1e-6)


def test_load_never_counts_the_running_threads(agent: Agent) -> None:
    # Two CPUs, the agent and one busy thread: nobody waits.
    agent.proc_stat.write_text(_proc_stat(cpus=2, running=2))
    agent.call("guest-get-load")
    time.sleep(10 * PERIOD_MS / 1000)
    assert agent.call("guest-get-load") == {"load1m": 0, "load5m": 0, "load15m": 0}
    # Two CPUs, the agent and five busy threads: three wait.
    agent.proc_stat.write_text(_proc_stat(cpus=2, running=6))
    deadline = time.monotonic() + 30
    load = agent.call("guest-get-load")
    while abs(load["load1m"] - 3) > 0.01 and time.monotonic() < deadline:
        time.sleep(PERIOD_MS / 1000)
        load = agent.call("guest-get-load")
    assert load["load1m"] == pytest.approx(3, abs=0.01)
    assert load["load15m"] < load["load5m"] < 3
    # An unreadable /proc/stat skips samples, as Windows skips a counter it cannot read.
    agent.proc_stat.unlink()
    before = agent.call("guest-get-load")
    time.sleep(5 * PERIOD_MS / 1000)
    assert agent.call("guest-get-load") == before


def test_exec_runs_detached_and_reports_exit_code_and_output(agent: Agent) -> None:
    script = "read line; echo out:$line; echo err >&2; exit 3"
    pid = agent.call(
        "guest-exec",
        path="/bin/sh",
        arg=["-c", script],
        **{"input-data": base64.b64encode(b"hello\n").decode(), "capture-output": True},
    )["pid"]
    status = agent.call("guest-exec-status", pid=pid)
    deadline = time.monotonic() + 10
    while not status["exited"] and time.monotonic() < deadline:
        time.sleep(0.05)
        status = agent.call("guest-exec-status", pid=pid)
    assert status["exitcode"] == 3
    assert base64.b64decode(status["out-data"]) == b"out:hello\n"
    assert base64.b64decode(status["err-data"]) == b"err\n"
    # Reported once: the pid is forgotten afterwards, as qemu-ga does.
    gone = agent.reply(
        json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}}).encode()
    )
    assert gone["error"]["desc"] == "Invalid parameter 'pid'"


def test_exec_of_a_missing_program_fails_at_once(agent: Agent) -> None:
    answer = agent.reply(b'{"execute":"guest-exec","arguments":{"path":"/no/such/program"}}')
    assert "No such file or directory" in answer["error"]["desc"]


def test_a_killed_process_reports_its_signal(agent: Agent) -> None:
    pid = agent.call("guest-exec", path="sleep", arg=["30"])["pid"]
    assert agent.call("guest-exec-status", pid=pid) == {"exited": False}
    agent.call("guest-exec", path="/bin/kill", arg=["-9", str(pid)])
    deadline = time.monotonic() + 10
    status = agent.call("guest-exec-status", pid=pid)
    while not status["exited"] and time.monotonic() < deadline:
        time.sleep(0.05)
        status = agent.call("guest-exec-status", pid=pid)
    assert status == {"exited": True, "signal": 9}


def test_end_of_input_ends_the_stdio_agent(agent: Agent) -> None:
    agent.call("guest-ping")
    assert agent.close() == 0
