"""``guestload bundle``: copying a bundle folder out, and the answer without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestload.cli.bundle import EXIT_NO_BUNDLE, print_bundle, write_bundle


def _bundle(root: Path) -> Path:
    (root / "rules").mkdir(parents=True)
    (root / "rules" / "guestload.rules.yml").write_text("groups: []\n")
    (root / "runbooks").mkdir()
    (root / "runbooks" / "GuestIOStall.md").write_text("# GuestIOStall\n")
    (root / "alerts.md").write_text("# Alerts\n")
    return root


def test_every_file_is_written_at_its_place(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle")
    output = tmp_path / "out"
    written = write_bundle(bundle, output)
    assert written == [
        output / "alerts.md",
        output / "rules" / "guestload.rules.yml",
        output / "runbooks" / "GuestIOStall.md",
    ]
    assert (output / "rules" / "guestload.rules.yml").read_text() == "groups: []\n"


def test_files_of_the_same_name_are_replaced_and_others_kept(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle")
    output = tmp_path / "out"
    (output / "rules").mkdir(parents=True)
    (output / "rules" / "guestload.rules.yml").write_text("old\n")
    (output / "local.yml").write_text("mine\n")
    write_bundle(bundle, output)
    assert (output / "rules" / "guestload.rules.yml").read_text() == "groups: []\n"
    assert (output / "local.yml").read_text() == "mine\n"


def test_the_command_lists_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle(tmp_path / "bundle")
    assert print_bundle(tmp_path / "out", bundle) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(tmp_path / "out" / "alerts.md")


def test_without_a_bundle_one_error_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert print_bundle(tmp_path / "out", tmp_path / "absent") == EXIT_NO_BUNDLE
    assert "carries no monitoring bundle" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle(tmp_path / "bundle")
    (tmp_path / "file").write_text("not a folder\n")
    assert print_bundle(tmp_path / "file" / "out", bundle) == EXIT_NO_BUNDLE
    err = capsys.readouterr().err
    assert err.startswith("guestload: error: --output: ")
    assert len(err.splitlines()) == 1
