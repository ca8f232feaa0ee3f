"""The replica group every test here runs against: three real node processes."""

from __future__ import annotations

import signal

import pytest

from jepsen_tests.nodes import GroupProcesses


@pytest.fixture
def group(tmp_path):
    processes = GroupProcesses(tmp_path / "group").start()
    yield processes
    for node in processes.nodes.values():  # a test may leave nodes stopped
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGCONT)
    processes.kill_all()
