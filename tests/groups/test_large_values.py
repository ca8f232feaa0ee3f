"""A peer that missed many large values catches up through its stream.

16 values of 700 KiB are written while one node is stopped (SIGSTOP); once
it runs again (resumed, or killed and restarted) its peers resend the
backlog. Stream batches are bounded in bytes, so every frame fits the
receiver's limit: the node gets every value and no link is dropped for a
frame's size (before the bound, frames of up to 7.2 MB were refused against
the 4 MiB limit, over and over).
"""

from __future__ import annotations

import signal

import pytest
import trio

from kvsvr.client import Client

from .test_group_processes import local_state, wait_until

pytestmark = pytest.mark.slow

VALUE = b"v" * (700 * 1024)
KEYS = [b"large/%02d" % index for index in range(16)]


async def write_backlog_while_stopped(group) -> None:
    group.nodes[3].process.send_signal(signal.SIGSTOP)
    async with Client(group.nodes[1].address) as client:  # n3 would coordinate some keys
        for key in KEYS:
            assert await client.put(key, VALUE, timeout=30) == 1


async def assert_caught_up_with_no_frame_refused(group) -> None:
    async def holds_everything():
        state = await local_state(group.nodes[3].address, b"large/")
        return len(state) == len(KEYS) and all(
            value == VALUE and version == 1 for value, version in state.values()
        )

    await wait_until(holds_everything, "n3 holds all 16 large values", seconds=60)
    for node in group.nodes.values():
        log = node.log_tail(400)
        assert "too_large" not in log and "dropping the link" not in log, log


@pytest.mark.parametrize("how", ["resumed", "restarted"])
async def test_a_stopped_peer_gets_a_backlog_of_large_values_with_no_frame_refused(group, how):
    await write_backlog_while_stopped(group)
    if how == "resumed":
        group.nodes[3].process.send_signal(signal.SIGCONT)
    else:
        await trio.to_thread.run_sync(group.nodes[3].restart)
    await assert_caught_up_with_no_frame_refused(group)
