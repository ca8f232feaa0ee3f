"""A node process stops cleanly on SIGTERM and SIGINT: exit code 0, every
acknowledged write there after the restart, even with writes in flight and
idle clients connected when the signal lands."""

from __future__ import annotations

import signal

import pytest
import trio
from kvsvr_test_support import AcknowledgedWrites, Writers, acknowledged_write_problems, read_back

from jepsen_tests.nodes import NodeProcess
from kvsvr.client import Client, Item, SyncClient

KEYS = [b"stop/key/%d" % number for number in range(4)]
TABLE = b"stop/table"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_stops_the_node_cleanly_keeping_acknowledged_writes(tmp_path, signum):
    """SIGTERM or SIGINT during a stream of writes, with an idle client also connected:
    the node exits with code 0 (promptly: NodeProcess waits at most 15 s), says why in
    its log, and after a restart holds every acknowledged write and the earlier ones."""
    node = NodeProcess(tmp_path / "node")
    await trio.to_thread.run_sync(node.start)
    acknowledged = AcknowledgedWrites()
    exit_codes = []

    def stop_with_signal() -> None:
        node.process.send_signal(signum)
        exit_codes.append(node.process.wait(15))

    try:
        async with Client(node.address) as idle, Client(node.address) as busy:
            assert await idle.put(b"before", b"signal") == 1
            writers = Writers("stop", KEYS, TABLE, acknowledged, {}, acks_wanted=200)
            await writers.run_until(busy, 4, stop_with_signal)
        assert exit_codes == [0], node.log_tail()
        assert f"received {signum.name}; stopping" in node.log_tail()
        await trio.to_thread.run_sync(node.start)
        async with Client(node.address) as client:
            assert await client.get(b"before") == Item(b"signal", 1)
            stored, rows, _ = await read_back(client, KEYS, TABLE)
    finally:
        await trio.to_thread.run_sync(node.kill)
    assert acknowledged_write_problems(acknowledged, stored, rows) == []
    assert writers.acks >= 200


def test_stop_of_an_idle_node_exits_zero_and_keeps_its_data(node_process):
    """The plain case, with NodeProcess.stop (SIGTERM and wait): exit code 0, data kept."""
    with SyncClient(node_process.address) as client:
        client.put(b"k", b"v")
    assert node_process.stop() == 0
    node_process.start()
    with SyncClient(node_process.address) as client:
        assert client.get(b"k") == Item(b"v", 1)
