"""The replica's parts talk only through each other's public methods, and
only to the parts they name.

Each part (acceptor, proposer, reads, catch-up, log stream, payloads) owns
its state; `Replica` connects to each exactly the parts in its `USES`, and
its module docstring lists what it calls there. This test reads the source:
a call into a part not in `USES`, into another part's private name, or one
the docstring does not list, fails it.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

PARTS = {
    "acceptor": "Acceptor",
    "proposer": "Proposer",
    "reads": "Reads",
    "catch_up": "CatchUp",
    "log_stream": "LogStream",
    "payloads": "PayloadStore",
}
SOURCE = Path(__file__).resolve().parents[2] / "kvsvr" / "replication"


def calls_into_parts(module: str) -> dict[str, set[str]]:
    tree = ast.parse((SOURCE / f"{module}.py").read_text())
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
            and node.value.attr in PARTS
        ):
            found.setdefault(node.value.attr, set()).add(node.attr)
    return found


@pytest.mark.parametrize("module", sorted(PARTS))
def test_a_part_calls_only_the_public_methods_of_the_parts_it_uses(module):
    cls = getattr(importlib.import_module(f"kvsvr.replication.{module}"), PARTS[module])
    calls = calls_into_parts(module)
    assert set(calls) == set(cls.USES)
    for part, names in calls.items():
        private = sorted(name for name in names if name.startswith("_"))
        assert not private, f"{module} reaches into {part}'s private {private}"
        target = getattr(importlib.import_module(f"kvsvr.replication.{part}"), PARTS[part])
        for name in names:
            assert hasattr(target, name) or name in _instance_attributes(part), (module, part, name)


@pytest.mark.parametrize("module", sorted(PARTS))
def test_a_parts_docstring_lists_what_it_calls(module):
    docstring = ast.get_docstring(ast.parse((SOURCE / f"{module}.py").read_text()))
    paragraph = " ".join(docstring[docstring.index("Calls into other parts"):].split())
    listed = {}
    for clause in paragraph.split(":", 1)[1].split(";"):
        part, names = clause.split(":")
        listed[part.strip()] = set(re.findall(r"`([a-z_]+)`", names))
    assert listed == calls_into_parts(module)


def _instance_attributes(module: str) -> set[str]:
    tree = ast.parse((SOURCE / f"{module}.py").read_text())
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and isinstance(node.ctx, ast.Store)
    }
