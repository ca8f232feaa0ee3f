"""The checker stands alone: it needs nothing of the store and no third-party package.

The simulator and the real-process suite both hand histories to it, and
histories from elsewhere (Jepsen's) are checked with it too, so it must not
depend on the code whose histories it judges.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CHECKER_DIRECTORY = Path(__file__).resolve().parents[2] / "jepsen_tests" / "checker"


def test_checker_imports_only_the_standard_library_and_itself() -> None:
    modules = sorted(CHECKER_DIRECTORY.glob("*.py"))
    assert modules, f"no checker modules in {CHECKER_DIRECTORY}"
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            else:
                continue
            for name in names:
                assert name in sys.stdlib_module_names or name == "__future__", f"{path.name} imports {name}"


def test_every_checker_module_opens_with_its_theory() -> None:
    for path in sorted(CHECKER_DIRECTORY.glob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring and len(docstring.splitlines()) >= 3, f"{path.name} has no theory docstring"
