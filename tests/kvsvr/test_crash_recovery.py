"""kill -9 in the middle of acknowledged writes loses none of them (real process).

Each round starts the node on the same data directory, runs concurrent
writers (puts over a set of keys and appends to one table, all on one
pipelined connection) that record every acknowledged write, and kills the
node with SIGKILL once the round has collected its quota of acks, while
every writer has a request in flight. After the restart, every
acknowledged write must be there, and new versions continue above the
ones that survived.
"""

from __future__ import annotations

import trio
from kvsvr_test_support import (
    AcknowledgedWrites,
    Writers,
    acknowledged_write_problems,
    read_back,
)

from jepsen_tests.nodes import NodeProcess
from kvsvr.client import Client

ROUNDS = 5
WRITERS = 8
KEYS = [b"crash/key/%d" % number for number in range(6)]
TABLE = b"crash/table"


async def read_everything(address: str) -> tuple[dict, dict, dict[bytes, int]]:
    async with Client(address) as client:
        return await read_back(client, KEYS, TABLE)


async def test_sigkill_during_acknowledged_writes_loses_none_of_them(tmp_path):
    """Five rounds of: concurrent writers, SIGKILL at an ack count while requests are in
    flight, restart. Every acknowledged put is there (stored version >= highest acked,
    same value when that version is the latest), the table's sync returns every
    acknowledged append once, in version order, and versions never go backwards."""
    node = NodeProcess(tmp_path / "node")
    acknowledged = AcknowledgedWrites()
    floors: dict[bytes, int] = {}
    in_flight_at_kills = []
    try:
        for number in range(ROUNDS):
            await trio.to_thread.run_sync(node.start)
            if number:
                stored, rows, floors = await read_everything(node.address)
                problems = acknowledged_write_problems(acknowledged, stored, rows)
                assert problems == [], f"after kill {number}:\n" + "\n".join(problems)
            writers = Writers(f"round{number}", KEYS, TABLE, acknowledged, floors,
                              acks_wanted=100 + 60 * number)
            async with Client(node.address, timeout_seconds=30) as client:
                await writers.run_until(client, WRITERS, node.kill)
            in_flight_at_kills.append(writers.in_flight_when_stopped)
            assert writers.version_problems == []
            assert writers.acks >= writers.acks_wanted
        await trio.to_thread.run_sync(node.start)
        stored, rows, _ = await read_everything(node.address)
    finally:
        await trio.to_thread.run_sync(node.kill)
    problems = acknowledged_write_problems(acknowledged, stored, rows)
    assert problems == [], "after the last kill:\n" + "\n".join(problems)
    assert all(in_flight > 0 for in_flight in in_flight_at_kills), in_flight_at_kills
    assert acknowledged.count >= sum(100 + 60 * number for number in range(ROUNDS))
    assert len(rows[TABLE]) >= len(acknowledged.appends[TABLE])
