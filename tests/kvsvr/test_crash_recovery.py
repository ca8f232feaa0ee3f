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
from kvsvr_test_support import AcknowledgedWrites, acknowledged_write_problems

from jepsen_tests.nodes import NodeProcess
from kvsvr.client import Client
from kvsvr.errors import KvError

ROUNDS = 5
WRITERS = 8
KEYS = [b"crash/key/%d" % number for number in range(6)]
TABLE = b"crash/table"
SYNC_PAGE_ROWS = 64


class Round:
    """One round's writers: what they were told, and when to pull the plug."""

    def __init__(self, number: int, acknowledged: AcknowledgedWrites, floors: dict[bytes, int]):
        self.number = number
        self.acknowledged = acknowledged
        self.floors = floors  # versions that survived the last restart
        self.acks_wanted = 100 + 60 * number
        self.acks = 0
        self.in_flight = 0
        self.enough_acks = trio.Event()
        self.version_problems: list[str] = []

    async def write_until_the_node_dies(self, client: Client, writer: int) -> None:
        sequence = 0
        while True:
            sequence += 1
            value = b"round%d-writer%d-%d" % (self.number, writer, sequence)
            appending = sequence % 3 == 0
            key = TABLE if appending else KEYS[(writer + sequence) % len(KEYS)]
            self.acknowledged.attempt(key, value)
            self.in_flight += 1
            try:
                if appending:
                    version = await client.append(key, value)
                else:
                    version = await client.put(key, value)
            except KvError:
                return  # the node is gone: this write's outcome is unknown, and we stop
            finally:
                self.in_flight -= 1
            if appending:
                self.acknowledged.acknowledge_append(key, version, value)
            else:
                self.acknowledged.acknowledge(key, version, value)
            if version <= self.floors.get(key, 0):
                self.version_problems.append(
                    f"{key!r}: version {version} after a restart that found "
                    f"{self.floors[key]} (versions went backwards)"
                )
            self.acks += 1
            if self.acks >= self.acks_wanted:
                self.enough_acks.set()


async def read_everything(address: str) -> tuple[dict, dict, dict[bytes, int]]:
    """Stored (version, value) of every key, the full sync of the table, and versions."""
    async with Client(address) as client:
        stored = {}
        for key in KEYS:
            item = await client.get(key)
            stored[key] = (item.version, item.value) if item else (0, None)
        rows, since = [], 0
        while True:
            page = await client.sync(TABLE, since, limit=SYNC_PAGE_ROWS)
            rows += [[row.row_id, row.version, row.value] for row in page.rows]
            since = page.version
            if not page.more:
                break
    versions = {key: version for key, (version, _) in stored.items()}
    versions[TABLE] = since
    return stored, {TABLE: rows}, versions


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
            round_ = Round(number, acknowledged, floors)
            async with Client(node.address, timeout_seconds=30) as client:
                async with trio.open_nursery() as nursery:
                    for writer in range(WRITERS):
                        nursery.start_soon(round_.write_until_the_node_dies, client, writer)
                    with trio.fail_after(60):
                        await round_.enough_acks.wait()
                    in_flight_at_kills.append(round_.in_flight)
                    await trio.to_thread.run_sync(node.kill)
            assert round_.version_problems == []
            assert round_.acks >= round_.acks_wanted
        await trio.to_thread.run_sync(node.start)
        stored, rows, _ = await read_everything(node.address)
    finally:
        await trio.to_thread.run_sync(node.kill)
    problems = acknowledged_write_problems(acknowledged, stored, rows)
    assert problems == [], "after the last kill:\n" + "\n".join(problems)
    assert all(in_flight > 0 for in_flight in in_flight_at_kills), in_flight_at_kills
    assert acknowledged.count >= sum(100 + 60 * number for number in range(ROUNDS))
    assert len(rows[TABLE]) >= len(acknowledged.appends[TABLE])
