"""Reading a scraped text exposition in tests: one series' value, or a family's sample lines."""

from __future__ import annotations


def metric_value(body: str, series: str) -> float | None:
    """The value of the exact series line ``series`` (name plus labels) in a text body."""
    for line in body.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return None


def sample_lines(body: str, metric_prefix: str) -> list[str]:
    """The sample lines (not HELP or TYPE) whose metric name starts with ``metric_prefix``."""
    return [line for line in body.splitlines() if line.startswith(metric_prefix)]
