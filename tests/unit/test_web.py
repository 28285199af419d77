"""The HTTP layer's decisions without a socket: content negotiation, refusal logging.

The server on a real socket is tested in tests/web/test_server.py."""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestload.web.negotiation import accepts_gzip
from guestload.web.refusals import Refusal, RefusalLog


@pytest.mark.parametrize(
    ("accept_encoding", "gzip_expected"),
    [
        ("gzip", True),
        ("GZIP;Q=1.000", True),
        ("x-gzip", True),
        ("deflate, gzip;q=0.001", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("gzip;q=-1", False),
        ("gzip;q=NaN", False),
        ("gzip;q=nan", False),
        ("gzip;q=inf", False),
        ("gzip;q=1.5", False),
        ("gzip;q=0.0001", False),
        ("gzip;q=", False),
        ("*", True),
        ("*;q=0", False),
        ("*, gzip;q=0", False),  # gzip named: the wildcard does not reach it
        ("gzip;q=0, *", False),
        ("identity", False),
        ("", False),
        ("br;q=1, gzip;q=0.5", True),
    ],
)
def test_accept_encoding_weights_follow_rfc_9110(accept_encoding: str, gzip_expected: bool) -> None:
    assert accepts_gzip(accept_encoding) is gzip_expected


@given(weight=st.text(max_size=8))
def test_gzip_only_with_a_valid_weight_above_zero(weight: str) -> None:
    valid = re.fullmatch(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?", weight.strip()) is not None
    assert accepts_gzip(f"gzip;q={weight}") is (valid and float(weight) > 0)


def test_refusals_are_logged_at_most_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    refusals = RefusalLog(interval_seconds=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="guestload.web.refusals"):
        for _ in range(5):
            refusals.record(Refusal.EVICTED, client="192.0.2.1")
        refusals.record(Refusal.BUSY, client="192.0.2.2")  # another kind: its own line
        now[0] += 10.0
        refusals.record(Refusal.EVICTED, client="192.0.2.3")
    lines = [(r.__dict__["reason"], r.__dict__["count"]) for r in caplog.records]
    assert lines == [("evicted", 1), ("busy", 1), ("evicted", 5)]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
