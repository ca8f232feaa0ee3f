"""Fixtures shared by the test tiers."""

from __future__ import annotations

import pytest

from jepsen_tests.nodes import NodeProcess


@pytest.fixture
def node_process(tmp_path):
    """A real node subprocess on a free loopback port, stopped after the test."""
    node = NodeProcess(tmp_path / "node").start()
    yield node
    node.kill()
