"""find_paths matches what glob.glob matches, on generated trees and patterns."""

from __future__ import annotations

import glob
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestload.sources.path_glob import find_paths

NAMES = ("a", "b", "ab", ".h", "[x]")
"""Entry names: plain, sharing a prefix, hidden, and one that reads as a character class."""
PARTS = (*NAMES, "*", "?", "a*", "[ab]", ".*", "*b", "[", "")
"""Pattern components: the names themselves, wildcards, an unbalanced bracket, empty."""

Tree = dict[str, "Tree | str"]
"""A directory: name -> a subdirectory, or "file", "link" (to a sibling) or "broken" (a
dangling symlink)."""

trees: st.SearchStrategy[Tree] = st.recursive(
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from(("file", "link", "broken"))),
    lambda children: st.dictionaries(st.sampled_from(NAMES), children | st.just("file")),
    max_leaves=12,
)


def build(directory: Path, tree: Tree) -> None:
    for name, node in tree.items():
        path = directory / name
        if isinstance(node, dict):
            path.mkdir()
            build(path, node)
        elif node == "file":
            path.write_text("")
        elif node == "link":
            path.symlink_to(directory)
        else:
            path.symlink_to(directory / "missing")


@settings(
    max_examples=150, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tree=trees, parts=st.lists(st.sampled_from(PARTS), min_size=1, max_size=4))
def test_the_same_paths_as_glob(tree: Tree, parts: list[str]) -> None:
    with tempfile.TemporaryDirectory() as root:
        build(Path(root), tree)
        pattern = "/".join([root, *parts])
        assert sorted(find_paths(pattern)) == sorted(glob.glob(pattern)), pattern


def test_a_kubelet_layout_finds_each_pod_s_socket(tmp_path: Path) -> None:
    runtime = "volumes/kubernetes.io~empty-dir/libvirt-runtime"
    for pod in ("pod-a", "pod-b", "pod-c", ".hidden-pod"):
        (tmp_path / "pods" / pod / runtime).mkdir(parents=True)
    for pod in ("pod-a", "pod-c", ".hidden-pod"):
        (tmp_path / "pods" / pod / runtime / "virtqemud-sock").write_text("")
    (tmp_path / "pods" / "a-file").write_text("")
    pattern = f"{tmp_path}/pods/*/{runtime}/virtqemud-sock"
    assert sorted(find_paths(pattern)) == [
        f"{tmp_path}/pods/{pod}/{runtime}/virtqemud-sock" for pod in ("pod-a", "pod-c")
    ]


def test_a_relative_pattern_is_refused() -> None:
    with pytest.raises(ValueError, match="not an absolute pattern"):
        find_paths("pods/*/sock")
