"""A quick run of the rendering benchmark (tiny sizes, seconds), so the command cannot rot.

It checks that both ways were measured on the same samples and that the writer's output was
identical to prometheus_client's; it asserts no timing target.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import render


def test_render_compares_prometheus_client_with_the_writer(tmp_path: Path) -> None:
    out = tmp_path / "render.json"
    assert render.main(["--vms", "5,20", "--runs", "2", "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["machine"]["cpus"] >= 1
    rendering = document["rendering"]
    assert [(r["vms"], r["format"]) for r in rendering] == [
        (5, "text"),
        (5, "openmetrics"),
        (20, "text"),
        (20, "openmetrics"),
    ]
    for result in rendering:
        assert result["identical"] is True
        assert result["samples"] > result["vms"] * 5  # loads, state, info and vCPU counters
        for way in ("prometheus_client", "writer", "writer_first"):
            assert len(result["cpu_seconds"][way]) == 2
            assert result["microseconds_per_sample"][way] > 0
    assert [p["vcpus"] for p in document["parsing"]] == [1, 8]
    assert all(p["microseconds_median"] > 0 for p in document["parsing"])
