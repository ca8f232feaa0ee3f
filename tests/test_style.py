"""Style checked by a test, not by memory (STYLE.md §15).

- The sans-IO core (every module of kvsvr/protocol, kvsvr/core,
  kvsvr/replication, and the storage interface and in-memory storage)
  imports no trio, socket, time, threading, asyncio, rocksdict or random
  (a seeded `random.Random` is passed in; the type may be named under
  TYPE_CHECKING): it takes messages and returns effects, so it can run
  under a simulator.
- Each kvsvr package exports a small public API from its __init__, and
  every name it exports exists.
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

SANS_IO_FOLDERS = ["kvsvr/protocol", "kvsvr/core", "kvsvr/replication"]
SANS_IO_FILES = ["kvsvr/storage/interface.py", "kvsvr/storage/memory.py"]
IO_MODULES = {"trio", "socket", "time", "random", "asyncio", "threading", "rocksdict"}
# Where the IO lives: the shells, the RocksDB storage, the client library.
IO_ALLOWED = ["kvsvr/shell", "kvsvr/storage/rocks.py", "kvsvr/client.py", "kvsvr/__main__.py"]

# package -> the packages above it, which it must never import
LAYERS = {
    "kvsvr": {"cluster", "chat_service", "cli", "jepsen_tests"},
    "cluster": {"chat_service", "cli", "jepsen_tests"},
}


def sans_io_modules() -> list[str]:
    found = [
        str(path.relative_to(REPOSITORY))
        for folder in SANS_IO_FOLDERS
        for path in sorted((REPOSITORY / folder).rglob("*.py"))
    ]
    return found + SANS_IO_FILES


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks (never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for inner in node.body:
                skipped.update(id(child) for child in ast.walk(inner))
    return skipped


def imported_top_level_names(path: Path) -> set[str]:
    """Top-level package names a module imports when it runs, anywhere in it
    (functions too; not what only a type checker sees)."""
    names = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    type_checking_only = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in type_checking_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def python_files(package: str) -> list[Path]:
    return sorted((REPOSITORY / package).rglob("*.py"))


@pytest.mark.parametrize("relative_path", sans_io_modules())
def test_the_sans_io_core_imports_no_io(relative_path):
    """The protocol core imports no trio, socket, time, threads, rocksdict or
    random (STYLE.md §1)."""
    path = REPOSITORY / relative_path
    assert path.exists(), f"{relative_path} is listed as sans-IO but does not exist"
    forbidden = imported_top_level_names(path) & IO_MODULES
    assert not forbidden, f"{relative_path} imports {sorted(forbidden)}"


def test_the_import_check_catches_a_planted_import(tmp_path):
    """The check above does fail: a module importing trio inside a function is
    caught, and so is an unseeded random outside a TYPE_CHECKING block."""
    planted = tmp_path / "planted.py"
    planted.write_text('"""A core module."""\n\ndef step():\n    import trio.lowlevel\n')
    assert imported_top_level_names(planted) & IO_MODULES == {"trio"}
    typed = tmp_path / "typed.py"
    typed.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import random\n")
    assert imported_top_level_names(typed) & IO_MODULES == set()
    typed.write_text("import random\n")
    assert imported_top_level_names(typed) & IO_MODULES == {"random"}


def test_every_kvsvr_module_is_sans_io_or_a_named_shell():
    """A new module lands in a sans-IO folder or in a place IO is allowed, so
    the check above cannot miss it."""
    covered = set(sans_io_modules())
    unplaced = [
        str(path.relative_to(REPOSITORY))
        for path in python_files("kvsvr")
        if str(path.relative_to(REPOSITORY)) not in covered
        and not any(str(path.relative_to(REPOSITORY)).startswith(place) for place in IO_ALLOWED)
        and path.name != "__init__.py"
    ]
    assert unplaced == []


# kvsvr's folders, lowest first: each imports only from those before it.
KVSVR_LAYERS = ["protocol", "storage", "core", "replication", "shell"]


def test_kvsvr_folders_import_only_the_layers_below_them():
    violations = []
    for index, layer in enumerate(KVSVR_LAYERS):
        above = set(KVSVR_LAYERS[index + 1:]) | {"client", "__main__"}
        for path in python_files(f"kvsvr/{layer}"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                modules = []
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules = [node.module]
                elif isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                for module in modules:
                    parts = module.split(".")
                    if parts[0] == "kvsvr" and len(parts) > 1 and parts[1] in above:
                        violations.append(f"{path.relative_to(REPOSITORY)} imports {module}")
    assert violations == []


@pytest.mark.parametrize(
    "package", ["kvsvr.protocol", "kvsvr.core", "kvsvr.storage", "kvsvr.replication", "kvsvr.shell"]
)
def test_each_package_exports_what_it_names(package):
    """Every package opens with its map, and every name in its __all__ exists."""
    import importlib

    module = importlib.import_module(package)
    assert module.__doc__ and len(module.__doc__.splitlines()) >= 3
    for name in getattr(module, "__all__", ()):
        assert hasattr(module, name), f"{package} exports {name}, which it lacks"


def test_the_sans_io_replica_imports_no_rocksdb():
    """Importing the replica (and storage's interface) leaves rocksdict and trio unimported."""
    code = (
        "import sys; import kvsvr.replication.replica, kvsvr.storage; "
        "sys.exit(1 if 'rocksdict' in sys.modules or 'trio' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, timeout=60)
    assert result.returncode == 0, "importing the sans-IO replica imported rocksdict or trio"


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_lower_layers_import_nothing_from_higher_ones(package):
    """kvsvr imports nothing from cluster/chat_service/cli/jepsen_tests; cluster nothing
    from chat_service/cli/jepsen_tests (STYLE.md §6)."""
    violations = {
        str(path.relative_to(REPOSITORY)): sorted(imported_top_level_names(path) & LAYERS[package])
        for path in python_files(package)
    }
    assert {path: names for path, names in violations.items() if names} == {}


def test_every_kvsvr_and_simulator_module_opens_with_a_docstring():
    """Modules open with their theory (STYLE.md §11): every module in kvsvr/
    and in the simulator has a docstring."""
    missing = [
        str(path.relative_to(REPOSITORY))
        for package in ("kvsvr", "jepsen_tests/simulator")
        for path in python_files(package)
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
