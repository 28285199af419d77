"""Running a domain's queries in turn: an agent-wide failure spares the remaining queries."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from guestload.metricspec import MetricSpec, VmSample
from guestload.model import AgentState, QueryReading
from guestload.queries.query import AGENT_WIDE_STATES, GuestQuery, run_queries

EXPECTED_AGENT_WIDE = frozenset(
    {
        AgentState.NOT_CONFIGURED,
        AgentState.NOT_CONNECTED,
        AgentState.TIMEOUT,
        AgentState.BUSY,
        AgentState.GONE,
    }
)
PER_QUERY_FAILURES = (
    AgentState.UNSUPPORTED,
    AgentState.INVALID,
    AgentState.ERROR,
    AgentState.NO_DATA,
)


class NamedQuery(GuestQuery):
    """A query that is only a name; the runner never parses or exports anything itself."""

    agent_command = "guest-test-command"

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def families(self) -> tuple[MetricSpec, ...]:
        return ()

    def parse_agent_reply(self, reply: object) -> QueryReading:
        return QueryReading(state=AgentState.INVALID, detail=f"{self.name} does not parse")

    def samples(self, value: object) -> Iterator[VmSample]:
        return iter(())


class ScriptedAgent:
    """Answers each query with its scripted reading and records the order it was asked in."""

    def __init__(self, readings: Mapping[str, QueryReading]) -> None:
        self.readings = readings
        self.asked: list[str] = []

    def __call__(self, query: GuestQuery) -> QueryReading:
        self.asked.append(query.name)
        return self.readings[query.name]


def reading(state: AgentState) -> QueryReading:
    """A reading in ``state``: a value when ok, a detail otherwise."""
    if state is AgentState.OK:
        return QueryReading(state=state, value=1.0)
    return QueryReading(state=state, detail=f"agent said {state}")


QUERIES = (NamedQuery("load"), NamedQuery("cpustats"), NamedQuery("disks"))


def test_the_agent_wide_states_are_those_about_the_agent_or_the_domain() -> None:
    assert AGENT_WIDE_STATES == EXPECTED_AGENT_WIDE
    assert AgentState.OK not in AGENT_WIDE_STATES
    assert not AGENT_WIDE_STATES.intersection(PER_QUERY_FAILURES)


def test_every_query_is_asked_in_order_and_its_reading_kept_by_name() -> None:
    scripted = {
        "load": reading(AgentState.OK),
        "cpustats": QueryReading(state=AgentState.OK, value={0: {"user": 1}}),
        "disks": reading(AgentState.OK),
    }
    agent = ScriptedAgent(scripted)
    readings = run_queries(QUERIES, agent)
    assert agent.asked == ["load", "cpustats", "disks"]
    assert list(readings) == ["load", "cpustats", "disks"]
    for name, expected in scripted.items():
        assert readings[name] is expected


def test_queries_are_asked_in_the_order_given_not_by_name() -> None:
    agent = ScriptedAgent(dict.fromkeys(("a", "b", "c"), reading(AgentState.OK)))
    run_queries((NamedQuery("c"), NamedQuery("a"), NamedQuery("b")), agent)
    assert agent.asked == ["c", "a", "b"]


def test_no_queries_ask_nothing_and_read_nothing() -> None:
    agent = ScriptedAgent({})
    assert run_queries((), agent) == {}
    assert agent.asked == []


@pytest.mark.parametrize("state", sorted(EXPECTED_AGENT_WIDE), ids=str)
def test_after_an_agent_wide_state_the_remaining_queries_are_not_asked(
    state: AgentState,
) -> None:
    failed = reading(state)
    agent = ScriptedAgent({"load": failed})
    readings = run_queries(QUERIES, agent)
    assert agent.asked == ["load"]
    assert readings["load"] is failed
    for name in ("cpustats", "disks"):
        assert readings[name] == QueryReading(
            state=state, detail=f"not asked: query load ended {state}"
        )


@pytest.mark.parametrize("state", sorted(EXPECTED_AGENT_WIDE), ids=str)
def test_a_later_agent_wide_state_names_the_query_that_met_it(state: AgentState) -> None:
    first = reading(AgentState.OK)
    failed = reading(state)
    agent = ScriptedAgent({"load": first, "cpustats": failed})
    readings = run_queries(QUERIES, agent)
    assert agent.asked == ["load", "cpustats"]
    assert readings["load"] is first
    assert readings["cpustats"] is failed
    assert readings["disks"] == QueryReading(
        state=state, detail=f"not asked: query cpustats ended {state}"
    )


@pytest.mark.parametrize("state", PER_QUERY_FAILURES, ids=str)
def test_after_a_failure_of_one_query_the_next_query_is_still_asked(state: AgentState) -> None:
    failed = reading(state)
    later = reading(AgentState.OK)
    agent = ScriptedAgent({"load": failed, "cpustats": later, "disks": later})
    readings = run_queries(QUERIES, agent)
    assert agent.asked == ["load", "cpustats", "disks"]
    assert readings == {"load": failed, "cpustats": later, "disks": later}


@pytest.mark.parametrize("state", list(AgentState), ids=str)
def test_only_agent_wide_states_stop_the_remaining_queries(state: AgentState) -> None:
    agent = ScriptedAgent({"load": reading(state), "cpustats": reading(AgentState.OK)})
    run_queries(QUERIES[:2], agent)
    expected = ["load"] if state in EXPECTED_AGENT_WIDE else ["load", "cpustats"]
    assert agent.asked == expected


def test_a_per_query_failure_then_an_agent_wide_one_stops_at_the_second() -> None:
    unsupported = reading(AgentState.UNSUPPORTED)
    timeout = reading(AgentState.TIMEOUT)
    queries = (*QUERIES, NamedQuery("users"))
    agent = ScriptedAgent({"load": unsupported, "cpustats": timeout})
    readings = run_queries(queries, agent)
    assert agent.asked == ["load", "cpustats"]
    assert readings["load"] is unsupported
    assert readings["cpustats"] is timeout
    for name in ("disks", "users"):
        assert readings[name] == QueryReading(
            state=AgentState.TIMEOUT, detail="not asked: query cpustats ended timeout"
        )


def test_the_first_agent_wide_state_is_the_one_passed_on() -> None:
    gone = reading(AgentState.GONE)
    agent = ScriptedAgent({"load": gone, "cpustats": reading(AgentState.TIMEOUT)})
    readings = run_queries(QUERIES, agent)
    assert agent.asked == ["load"]
    assert readings["cpustats"].state is AgentState.GONE
    assert readings["disks"].state is AgentState.GONE
    assert readings["cpustats"].value is None
