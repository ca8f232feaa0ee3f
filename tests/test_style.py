"""Style checked by a test, not by memory (STYLE.md §15).

- The sans-IO core imports no trio, socket, time, random or asyncio: it
  takes messages and returns effects, so it can run under a simulator.
- Layers are visible in the tree: kvsvr knows nothing of cluster,
  chat_service, cli or jepsen_tests; cluster nothing of chat_service, cli
  or jepsen_tests.
- Every kvsvr module opens with a docstring: its theory of operation.
- The linter passes.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]

SANS_IO_MODULES = [
    "kvsvr/model.py",
    "kvsvr/keyspace.py",
    "kvsvr/engine.py",
    "kvsvr/requests.py",
    "kvsvr/records.py",
    "kvsvr/wire.py",
    "kvsvr/peer_auth.py",
]
IO_MODULES = {"trio", "socket", "time", "random", "asyncio"}

# package -> the packages above it, which it must never import
LAYERS = {
    "kvsvr": {"cluster", "chat_service", "cli", "jepsen_tests"},
    "cluster": {"chat_service", "cli", "jepsen_tests"},
}


def imported_top_level_names(path: Path) -> set[str]:
    """Top-level package names a module imports, anywhere in it (functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def python_files(package: str) -> list[Path]:
    return sorted((REPOSITORY / package).rglob("*.py"))


@pytest.mark.parametrize("relative_path", SANS_IO_MODULES)
def test_the_sans_io_core_imports_no_io(relative_path):
    """The protocol core imports no trio, socket, time, random or asyncio (STYLE.md §1)."""
    path = REPOSITORY / relative_path
    assert path.exists(), f"{relative_path} is listed as sans-IO but does not exist"
    forbidden = imported_top_level_names(path) & IO_MODULES
    assert not forbidden, f"{relative_path} imports {sorted(forbidden)}"


def test_the_import_check_catches_a_planted_import(tmp_path):
    """The check above does fail: a module importing trio inside a function is caught."""
    planted = tmp_path / "planted.py"
    planted.write_text('"""A core module."""\n\ndef step():\n    import trio.lowlevel\n')
    assert imported_top_level_names(planted) & IO_MODULES == {"trio"}


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_lower_layers_import_nothing_from_higher_ones(package):
    """kvsvr imports nothing from cluster/chat_service/cli/jepsen_tests; cluster nothing
    from chat_service/cli/jepsen_tests (STYLE.md §6)."""
    violations = {
        str(path.relative_to(REPOSITORY)): sorted(imported_top_level_names(path) & LAYERS[package])
        for path in python_files(package)
    }
    assert {path: names for path, names in violations.items() if names} == {}


def test_every_kvsvr_module_opens_with_a_docstring():
    """Modules open with their theory (STYLE.md §11): every module in kvsvr/ has a docstring."""
    missing = [
        str(path.relative_to(REPOSITORY))
        for path in python_files("kvsvr")
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []


def test_kvsvr_is_a_package():
    """kvsvr/ has an __init__.py, so `pip install` ships it (setup.cfg finds packages)."""
    assert (REPOSITORY / "kvsvr" / "__init__.py").is_file()


def test_ruff_passes():
    """`ruff check .` from the repository root reports nothing."""
    if shutil.which("ruff") is None:
        try:
            import ruff  # noqa: F401  (the wheel ships the binary as a module)
        except ImportError:
            pytest.skip("ruff is not installed (pip install -e '.[test]' brings it)")
        command = [sys.executable, "-m", "ruff"]
    else:
        command = ["ruff"]
    result = subprocess.run(
        [*command, "check", "--no-cache", "."],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
