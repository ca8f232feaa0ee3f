"""A replica group of three real node processes on loopback.

These tests prove what the simulator can't: the shell, the peer links, the
disks and the client's routing work together, and a group keeps its
promises when real processes die and come back.
"""

from __future__ import annotations

import signal

import pytest
import trio

from kvsvr.client import Client
from kvsvr.protocol.errors import Timeout, Unavailable

WAIT_SECONDS = 30


async def wait_until(condition, what: str, seconds: float = WAIT_SECONDS):
    """Poll an async condition until it holds, or fail naming what never happened."""
    with trio.move_on_after(seconds):
        while True:
            result = await condition()
            if result:
                return result
            await trio.sleep(0.05)
    raise AssertionError(f"after {seconds}s: {what}")


async def local_state(address: str, prefix: bytes) -> dict[bytes, tuple[bytes, int]]:
    """What one node has applied (a scan is served from the node's own state)."""
    async with Client(address) as client:
        return {item.key: (item.value, item.version) async for item in client.scan(prefix=prefix)}


async def test_every_node_serves_linearizable_reads_of_a_write_made_through_another(group):
    """A write acknowledged through one node is read, at its version, through every node."""
    async with Client(group.nodes[1].address) as client:
        version = await client.put(b"k", b"v1")
    for node in group.nodes.values():
        async with Client(node.address) as client:
            item = await client.get(b"k")
        assert (item.value, item.version) == (b"v1", version)


async def test_writes_go_on_with_one_node_killed_and_it_catches_up_on_restart(group):
    """Kill -9 one node: a majority keeps accepting writes; on restart the node
    catches up through the replication stream to the same state as its peers."""
    async with Client(group.addresses) as client:
        for index in range(20):
            await client.put(b"before-%02d" % index, b"x%d" % index)
        group.nodes[3].kill()
        acknowledged = {}
        for index in range(40):
            key = b"during-%02d" % (index % 10)
            acknowledged[key] = (b"y%d" % index, await client.put(key, b"y%d" % index))
        await client.append(b"table", b"row-during")
    group.nodes[3].start()

    async def caught_up():
        state = await local_state(group.nodes[3].address, b"during-")
        return state == acknowledged

    await wait_until(caught_up, "node 3 never caught up with the writes made while it was down")
    reference = await local_state(group.nodes[1].address, b"")
    await wait_until(
        lambda: _equals(local_state(group.nodes[3].address, b""), reference),
        "node 3's state never matched node 1's",
    )


async def _equals(state_coroutine, expected):
    return await state_coroutine == expected


async def test_a_write_whose_quorum_stops_answering_is_reported_indeterminate(group):
    """SIGSTOP two nodes: a write the coordinator already proposed cannot be
    decided; the client hears `timeout` with an unknown outcome, never `failed`."""
    async with Client(group.nodes[1].address) as client:
        await client.put(b"k", b"v1")  # node 1 now holds k's promise
        for node_id in (2, 3):
            group.nodes[node_id].process.send_signal(signal.SIGSTOP)
        with pytest.raises(Timeout) as caught:
            await client.put(b"k", b"v2", timeout=1.0)
        assert caught.value.indeterminate
        for node_id in (2, 3):
            group.nodes[node_id].process.send_signal(signal.SIGCONT)
        # Once the quorum is back the key is readable, at one of the two outcomes.
        item = await wait_until(lambda: _get_when_available(client, b"k"), "no quorum after SIGCONT")
        assert (item.value, item.version) in {(b"v1", 1), (b"v2", 2)}


async def test_with_two_nodes_down_writes_and_reads_fail_unavailable_and_nothing_is_half_done(group):
    """Kill two of three: writes and linearizable reads are refused `unavailable`
    (a definite failure); after the restart the refused write is nowhere."""
    async with Client(group.nodes[1].address) as client:
        await client.put(b"k", b"v1")
        group.nodes[2].kill()
        group.nodes[3].kill()


        async def noticed():
            return (await client.status())["reachable_members"] == 1

        await wait_until(noticed, "node 1 never noticed its peers were gone")
        with pytest.raises(Unavailable):
            await client.put(b"k", b"refused", timeout=5)
        with pytest.raises(Unavailable):
            await client.get(b"k", timeout=5)
    group.nodes[2].start()
    group.nodes[3].start()
    async with Client(group.addresses) as client:
        item = await wait_until(lambda: _get_when_available(client, b"k"), "no quorum after restart")
    assert item.value == b"v1", "a write refused as unavailable took effect"


async def _get_when_available(client, key):
    try:
        return await client.get(key, timeout=5)
    except Unavailable:
        return None


async def test_stale_reads_answer_from_the_node_itself_and_say_so(group):
    """`stale` reads skip the quorum: the answer is marked stale, and once the
    node has applied a write it returns it."""
    async with Client(group.nodes[1].address) as client:
        version = await client.put(b"k", b"v1")
    async with Client(group.nodes[2].address) as client:

        async def applied():
            item = await client.get(b"k", stale=True)  # None until node 2 applied it
            return item is not None and (item.value, item.version) == (b"v1", version)

        await wait_until(applied, "node 2 never applied the write")
        answer = await client.call("get", b"k", {"key": b"k", "stale": True})
        assert answer["stale"] is True
