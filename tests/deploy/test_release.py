"""Release artefacts: ``scripts/release`` builds an sdist and a wheel that pass ``twine check``;
the wheel holds the ``guestload`` package alone plus the monitoring bundle of its version, and,
installed alone into a clean virtualenv, writes that bundle out for promtool to test."""

from __future__ import annotations

import os
import subprocess
import tarfile
import tomllib
from pathlib import Path

import pytest

from tests.release import ROOT, Release, build_release, install_wheel

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
BUNDLE_SOURCES: dict[str, str] = PYPROJECT["tool"]["guestload"]["bundle"]
"""The bundle's one list (``[tool.guestload.bundle]``), which ``setup.py`` builds from too."""


def _bundle_sources() -> dict[str, Path]:
    """Every bundle file by its path inside the bundle, with its file in the repository."""
    files: dict[str, Path] = {}
    for name, source in BUNDLE_SOURCES.items():
        origin = ROOT / source
        if origin.is_file():
            files[name] = origin
            continue
        for path in origin.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files[f"{name}/{path.relative_to(origin).as_posix()}"] = path
    return files


def _expected_bundle() -> dict[str, bytes]:
    """Every bundle file by its path inside the bundle, with the repository's bytes."""
    return {name: path.read_bytes() for name, path in _bundle_sources().items()}


def test_the_bundle_list_names_every_part_once() -> None:
    """Each part exists, and no file is named twice (a folder inside another part)."""
    assert {"rules", "rules-tests", "runbooks", "alerts.md", "systemd"} <= set(BUNDLE_SOURCES)
    assert all((ROOT / source).exists() for source in BUNDLE_SOURCES.values())
    sources = list(_bundle_sources().values())
    assert len(sources) == len(set(sources))


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    return build_release(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def installed(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_wheel(release.wheel, tmp_path_factory.mktemp("wheel-only") / "venv")


def _run_alone(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run without this checkout anywhere on the module path."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=120, cwd=cwd, env=env
    )


def test_sdist_and_wheel_pass_twine_check(release: Release) -> None:
    assert release.wheel.name == f"guestload-{VERSION}-py3-none-any.whl"
    assert release.sdist.name == f"guestload-{VERSION}.tar.gz"
    passed = [line for line in release.output.splitlines() if line.startswith("Checking ")]
    assert len(passed) == 2
    assert all(line.endswith("PASSED") for line in passed), passed


def test_the_wheel_holds_only_the_guestload_package(release: Release) -> None:
    top_level = {name.split("/", 1)[0] for name in release.wheel_names()}
    assert top_level == {"guestload", f"guestload-{VERSION}.dist-info"}
    code = {name for name in release.wheel_names() if name.endswith(".py")}
    assert "guestload/cli/bundle.py" in code
    assert all(name.startswith("guestload/") for name in code)


def test_the_wheel_carries_the_bundle_of_its_version(release: Release) -> None:
    import zipfile  # noqa: PLC0415 - only this test reads the archive's bytes

    with zipfile.ZipFile(release.wheel) as archive:
        carried = {
            name.removeprefix("guestload/bundle/"): archive.read(name)
            for name in archive.namelist()
            if name.startswith("guestload/bundle/")
        }
    assert carried == _expected_bundle()


def test_the_sdist_builds_the_same_bundle(release: Release) -> None:
    with tarfile.open(release.sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    bundle = {path.relative_to(ROOT).as_posix() for path in _bundle_sources().values()}
    assert {"setup.py", "pyproject.toml", "docs/alerts.md"} <= names
    assert bundle <= names
    assert not any(name.startswith(("guestload_lab/", "bench/", "tests/")) for name in names)


def test_the_wheel_alone_runs_and_writes_its_bundle_for_promtool(
    installed: Path, tmp_path: Path
) -> None:
    version = _run_alone([str(installed / "guestload"), "--version"], cwd=tmp_path)
    assert version.stdout.strip() == f"guestload {VERSION}", version.stderr
    where = _run_alone(
        [str(installed / "python"), "-c", "import guestload; print(guestload.__file__)"],
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(installed.parent)), where.stdout
    output = tmp_path / "bundle"
    written = _run_alone(
        [str(installed / "guestload"), "bundle", "--output", str(output)], cwd=tmp_path
    )
    assert written.returncode == 0, written.stderr
    files = {
        str(path.relative_to(output)): path.read_bytes()
        for path in output.rglob("*")
        if path.is_file()
    }
    assert files == _expected_bundle()
    assert len(written.stdout.splitlines()) == len(files)
    tests = sorted(str(path) for path in (output / "rules-tests").glob("*.test.yml"))
    promtool = _run_alone(["promtool", "test", "rules", *tests], cwd=output / "rules-tests")
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr
    assert promtool.stdout.count("SUCCESS") == len(tests)
