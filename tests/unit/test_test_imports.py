"""Test modules share code through helper modules only: no imports of test modules or conftest.

pytest imports each test module and conftest itself; importing one from another runs its
tests' module code twice and ties unrelated tiers together.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def forbidden_imports(path: Path) -> list[str]:
    """The modules ``path`` imports that are test modules or conftest files."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            last = name.rsplit(".", 1)[-1]
            if name.startswith("tests.") and (last.startswith("test_") or last == "conftest"):
                found.append(name)
                break
    return found


def test_no_test_module_imports_another_test_module_or_conftest() -> None:
    offenders = {
        str(path.relative_to(TESTS)): imports
        for path in sorted(TESTS.rglob("*.py"))
        if "node_modules" not in path.parts and (imports := forbidden_imports(path))
    }
    assert offenders == {}


def test_the_check_sees_both_kinds_of_import(tmp_path: Path) -> None:
    module = tmp_path / "test_example.py"
    module.write_text(
        "from tests.unit.test_poller import make_poller\n"
        "import tests.security.conftest\n"
        "from tests.unit.fakes import FakeSource\n"
    )
    assert forbidden_imports(module) == ["tests.unit.test_poller", "tests.security.conftest"]
