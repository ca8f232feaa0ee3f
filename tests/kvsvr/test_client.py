"""The client library: pipelining, deadlines, failures and what they mean,
and the synchronous wrapper.

Some tests talk to fake nodes (a trio listener that misbehaves on purpose:
answers out of order, never answers, hangs up); the rest to a real node.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
from kvsvr_test_support import serving_node

from jepsen_tests.nodes import NodeProcess, free_port
from kvsvr.client import Client, Item, SyncClient
from kvsvr.protocol.errors import ConditionFailed, Timeout, Unavailable
from kvsvr.protocol.limits import DEFAULT_LIMITS
from kvsvr.protocol.wire import FrameDecoder, answer_frame, decode_body

FakeHandler = Callable[[trio.SocketStream, FrameDecoder], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_node(handler: FakeHandler) -> AsyncIterator[str]:
    """A listener on a free port that hands each connection to `handler`."""

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            await handler(stream, FrameDecoder(DEFAULT_LIMITS.frame_size_max_bytes))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        yield "127.0.0.1:%d" % listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def read_requests(stream: trio.SocketStream, decoder: FrameDecoder, count: int) -> list:
    requests = []
    while len(requests) < count:
        data = await stream.receive_some(65536)
        if not data:
            break
        decoder.feed(data)
        while (body := decoder.next_body()) is not None:
            requests.append(decode_body(body))
    return requests


async def test_answers_are_matched_to_calls_by_id_whatever_their_order():
    """50 calls pipelined on one connection, answered by a fake node in reverse order:
    every call gets its own answer (the fake echoes each request's key)."""
    calls = 50

    async def answer_in_reverse(stream, decoder):
        requests = await read_requests(stream, decoder, calls)
        assert len(requests) == calls  # one connection carried every call
        await stream.send_all(b"".join(
            answer_frame(request["id"], {"value": request["key"], "version": request["id"]})
            for request in reversed(requests)))
        await read_requests(stream, decoder, 1)  # hold the connection until the client leaves

    results = {}
    async with fake_node(answer_in_reverse) as address, Client(address) as client:

        async def get(number: int) -> None:
            results[number] = await client.get(b"key-%d" % number)

        async with trio.open_nursery() as nursery:
            for number in range(calls):
                nursery.start_soon(get, number)
    assert {number: item.value for number, item in results.items()} == {
        number: b"key-%d" % number for number in range(calls)
    }


async def test_many_concurrent_calls_share_one_connection_to_a_real_node():
    """300 concurrent puts and gets through one Client: each put gets version 1 of its
    own key, each get its own value, and the node saw one client connection."""
    async with serving_node() as (node, address), Client(address) as client:
        versions, items = {}, {}

        async def put_then_get(number: int) -> None:
            key = b"pipelined-%d" % number
            versions[number] = await client.put(key, b"value-%d" % number)
            items[number] = await client.get(key)

        async with trio.open_nursery() as nursery:
            for number in range(300):
                nursery.start_soon(put_then_get, number)
        status = await client.status()
    assert set(versions.values()) == {1}
    assert items == {number: Item(b"value-%d" % number, 1) for number in range(300)}
    assert status["connections"] == 1


async def test_a_call_past_its_deadline_is_an_indeterminate_timeout():
    """A node that accepts and reads but never answers: the call raises Timeout at its
    deadline, and Timeout says the outcome is unknown (indeterminate), never 'failed'."""

    async def read_forever(stream, decoder):
        await read_requests(stream, decoder, 10**9)

    async with fake_node(read_forever) as address, Client(address, timeout_seconds=30) as client:
        started = trio.current_time()
        with pytest.raises(Timeout) as timed_out:
            await client.put(b"k", b"v", timeout=0.3)
        elapsed = trio.current_time() - started
    assert timed_out.value.indeterminate
    assert timed_out.value.code == "timeout"
    assert 0.3 <= elapsed < 5


async def test_the_client_wide_timeout_applies_when_a_call_gives_none():
    """Client(timeout_seconds=...) is every call's default deadline."""

    async def read_forever(stream, decoder):
        await read_requests(stream, decoder, 10**9)

    async with fake_node(read_forever) as address, Client(address, timeout_seconds=0.2) as client:
        with pytest.raises(Timeout):
            await client.get(b"k")


async def test_a_connection_lost_after_sending_is_an_indeterminate_timeout():
    """A node that reads the request and hangs up: the write may or may not have happened,
    so the call raises Timeout (indeterminate) at once, not at its deadline."""

    async def hang_up_after_one(stream, decoder):
        await read_requests(stream, decoder, 1)

    async with fake_node(hang_up_after_one) as address, Client(address) as client:
        with trio.fail_after(5):
            with pytest.raises(Timeout) as lost:
                await client.put(b"k", b"v", timeout=60)
    assert lost.value.indeterminate
    assert "lost" in lost.value.message


async def test_connection_refused_is_unavailable_and_definite():
    """Nothing listening: Unavailable naming the address; nothing was sent, so the
    failure is definite (not indeterminate)."""
    address = "127.0.0.1:%d" % free_port()
    async with Client(address) as client:
        with pytest.raises(Unavailable) as refused:
            await client.put(b"k", b"v")
    assert not refused.value.indeterminate
    assert address in refused.value.message


async def test_the_client_tries_the_next_address_when_one_refuses():
    """With several addresses, a refused one is skipped and the next one serves."""
    async with serving_node() as (_, address):
        async with Client(f"127.0.0.1:{free_port()},{address}") as client:
            assert await client.put(b"k", b"v") == 1


async def test_a_client_used_outside_async_with_says_so():
    """Calls before `async with` fail with a clear RuntimeError, not a crash deep inside."""
    with pytest.raises(RuntimeError, match="async with"):
        await Client("127.0.0.1:1").get(b"k")


async def test_scan_follows_resume_tokens_through_every_page():
    """Client.scan pages with small limits and yields every live key exactly once."""
    async with serving_node() as (_, address), Client(address) as client:
        for number in range(25):
            await client.put(b"s/%02d" % number, b"v")
        await client.delete(b"s/07")
        keys = [item.key async for item in client.scan(prefix=b"s/", limit=4)]
    assert keys == [b"s/%02d" % number for number in range(25) if number != 7]


async def test_the_client_reconnects_after_the_node_restarts(tmp_path):
    """One Client across a node restart: once the old connection is gone, the next call
    opens a new one and sees the data the node kept."""
    node = NodeProcess(tmp_path / "node")
    await trio.to_thread.run_sync(node.start)
    try:
        async with Client(node.address) as client:
            await client.put(b"k", b"v")
            await trio.to_thread.run_sync(node.kill)
            await trio.to_thread.run_sync(node.start)
            assert await client.get(b"k") == Item(b"v", 1)
    finally:
        await trio.to_thread.run_sync(node.kill)


def test_sync_client_round_trip(node_process):
    """SyncClient, for scripts: the same calls, blocking, with the same errors."""
    with SyncClient(node_process.address) as client:
        assert client.put(b"k", b"v1") == 1
        assert client.get(b"k") == Item(b"v1", 1)
        assert client.cas(b"k", b"v2", expected_version=1) == 2
        with pytest.raises(ConditionFailed) as failed:
            client.cas(b"k", b"v3", expected_version=1)
        assert failed.value.version == 2
        assert client.delete(b"k") == 3
        assert client.get(b"k") is None
        assert client.append(b"t", b"row") == 1
        assert [row.value for row in client.sync(b"t", 0).rows] == [b"row"]
        assert [item.key for item in client.scan(prefix=b"")] == [b"t"]
        assert client.status()["writes_applied"] == 4
        client.ping()


async def test_an_error_inside_the_client_block_reaches_the_caller_unwrapped():
    """`except Unavailable` around `async with Client(...)` catches the error
    itself, not an ExceptionGroup made by the client's background tasks."""
    with pytest.raises(Unavailable):
        async with Client(f"127.0.0.1:{free_port()}") as client:
            await client.put(b"k", b"v")


async def test_leaving_the_client_block_by_cancellation_closes_it_cleanly(node_process):
    """A cancelled block still closes the client's links and nursery (no
    'nursery stack corrupted')."""
    with trio.move_on_after(0.3) as scope:
        async with Client(node_process.address) as client:
            await client.put(b"k", b"v")
            await trio.sleep_forever()
    assert scope.cancelled_caught
    async with Client(node_process.address) as client:
        assert (await client.get(b"k")).value == b"v"
