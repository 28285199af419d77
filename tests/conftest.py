"""Options and settings shared by every test folder."""

from __future__ import annotations

import pytest
from hypothesis import settings

# Hypothesis fails an example that runs over 200 ms of wall-clock time (as "Flaky" when its
# re-run is quicker): on a loaded machine that failed property tests whose code was fine.
# Property tests here check what the code answers, never how fast it answers.
settings.register_profile("guestload", deadline=None)
settings.load_profile("guestload")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite golden files from the current output instead of comparing",
    )
