"""Catch-up by state transfer on real processes (R11, R12).

The nodes keep only a handful of log records for a lagging peer and
collect payloads quickly, so while one node is down its peers trim their
logs past everything it missed. On restart it hears that its stream was
trimmed, walks each peer's decided keys and takes their states, and ends
with what its peers hold, tables included.
"""

from __future__ import annotations

import pytest

from jepsen_tests.nodes import GroupProcesses
from kvsvr.client import Client

from .test_group_processes import local_state, wait_until

RETAINED_LOG_RECORDS = 5
PAYLOAD_KEEP_TICKS = 20  # 0.2 s at the default tick


@pytest.fixture
def trimming_group(tmp_path):
    processes = GroupProcesses(
        tmp_path / "group",
        extra_args=(
            "--log-retained-records", str(RETAINED_LOG_RECORDS),
            "--payload-keep-ticks", str(PAYLOAD_KEEP_TICKS),
        ),
    ).start()
    yield processes
    processes.kill_all()


async def status_of(address: str) -> dict:
    async with Client(address) as client:
        return await client.status()


async def table_rows(address: str, key: bytes) -> list[bytes]:
    async with Client(address) as client:
        answer = await client.sync(key, 0, stale=True)
    return [row.value for row in answer.rows]


async def test_a_node_behind_the_trimmed_logs_catches_up_by_state_transfer(trimming_group):
    group = trimming_group
    async with Client(group.addresses) as client:
        for index in range(10):
            await client.put(b"key-%02d" % index, b"before")
        group.nodes[3].kill()
        acknowledged = {}
        for round_number in range(6):
            for index in range(10):
                key = b"key-%02d" % index
                value = b"round-%d" % round_number
                acknowledged[key] = (value, await client.put(key, value))
        rows = [b"row-%02d" % index for index in range(25)]
        for row in rows:
            await client.append(b"table", row)

    async def trimmed_past_node_3():
        statuses = [await status_of(group.nodes[node_id].address) for node_id in (1, 2)]
        return all(status["log_trimmed_through"] != [0, 0] for status in statuses)

    await wait_until(trimmed_past_node_3, "nodes 1 and 2 never trimmed their logs")
    group.nodes[3].start()
    node_3 = group.nodes[3].address

    async def caught_up():
        return (
            await local_state(node_3, b"key-") == acknowledged
            and await table_rows(node_3, b"table") == rows
        )

    await wait_until(caught_up, "node 3 never caught up with what it missed")
    status = await status_of(node_3)
    assert status["walks_started"] >= 1, status  # it was told its streams were trimmed
    assert status["states_installed"] >= 1, status  # and took states, not log records
    assert await local_state(node_3, b"") == await local_state(group.nodes[1].address, b"")
