"""The server under bad input and load: every bad frame gets a clear error or a
closed connection, and never crashes the node or touches stored data.

Nodes run in-process (trio, `Node.serve` on port 0) with small limits;
clients here speak raw frames so that they can misbehave.
"""

from __future__ import annotations

import socket
import struct

import crc32c
import pytest
import trio
from kvsvr_test_support import (
    exchange,
    open_raw,
    read_answers,
    request_frame,
    serving_node,
    wait_until_async,
)

from kvsvr.client import Client
from kvsvr.protocol.errors import Overloaded
from kvsvr.protocol.limits import Limits
from kvsvr.protocol.wire import encode_frame

SMALL = Limits(
    key_size_max_bytes=64,
    value_size_max_bytes=1024,
    frame_size_max_bytes=8192,
    connections_max=4,
    commit_queue_ops_max=10,
)


@pytest.fixture
async def node_and_address():
    async with serving_node(limits=SMALL) as (node, address):
        async with Client(address) as client:
            await client.put(b"stored", b"before")
        yield node, address


async def assert_still_serving(address: str) -> None:
    """A fresh connection gets the value stored before the bad input, unchanged."""
    answers, _ = await exchange(address, request_frame(99, "get", key=b"stored"), count=1)
    assert answers == [{"id": 99, "ok": {"value": b"before", "version": 1}}]


async def test_a_frame_with_a_bad_checksum_is_answered_then_closed(node_and_address):
    """A checksum mismatch breaks the framing: one bad_request answer (id 0), then the
    node closes the connection, and the next connection is served."""
    node, address = node_and_address
    frame = bytearray(request_frame(1, "put", key=b"stored", value=b"evil"))
    frame[-1] ^= 0xFF
    answers, closed = await exchange(address, bytes(frame))
    assert closed
    assert [(answer["id"], answer["error"]["code"]) for answer in answers] == [(0, "bad_request")]
    assert "checksum" in answers[0]["error"]["message"]
    await assert_still_serving(address)


async def test_a_frame_length_over_the_limit_is_answered_too_large_then_closed(node_and_address):
    """A length prefix over frame_size_max_bytes: too_large (id 0), connection closed,
    and nothing of the announced frame is buffered."""
    node, address = node_and_address
    answers, closed = await exchange(address, struct.pack(">II", 10**9, 0) + b"x" * 100)
    assert closed
    assert [(answer["id"], answer["error"]["code"]) for answer in answers] == [(0, "too_large")]
    await assert_still_serving(address)


async def test_a_truncated_frame_then_eof_closes_without_an_answer(node_and_address):
    """Half a frame and then end-of-stream: nothing to answer, the connection closes, the
    half-written put is not applied."""
    node, address = node_and_address
    frame = request_frame(1, "put", key=b"stored", value=b"evil")
    stream = await open_raw(address)
    async with stream:
        await stream.send_all(frame[: len(frame) // 2])
        await stream.send_eof()
        answers, closed = await read_answers(stream)
    assert (answers, closed) == ([], True)
    assert node.engine.writes_applied == 1
    await assert_still_serving(address)


@pytest.mark.parametrize(
    "body, expected_id, words",
    [
        ({"id": 5, "op": "put", "key": b"stored", "value": 17}, 5, "'value' must be bytes"),
        ({"id": 6, "op": "put", "key": "text", "value": b"v"}, 6, "'key' must be bytes"),
        ({"id": 7, "op": "get"}, 7, "'key' (bytes) is required"),
        ({"id": 8, "op": "frobnicate", "key": b"stored"}, 8, "unknown operation 'frobnicate'"),
        ({"id": 9, "op": 3}, 9, "no 'op'"),
        ({"id": 10, "op": "scan", "prefix": b"a", "start": b"a"}, 10, "not both"),
        ({"id": 11, "op": "put", "key": b"stored", "value": b"v", "expected_version": -1}, 11,
         "expected_version"),
        ({"id": "twelve", "op": "ping"}, 0, "integer 'id'"),
        ({"id": True, "op": "ping"}, 0, "integer 'id'"),
        ([1, 2, 3], 0, "CBOR map"),
    ],
    ids=["wrong-value-type", "text-key", "missing-key", "unknown-op", "op-not-text",
         "prefix-and-start", "negative-version", "text-id", "bool-id", "not-a-map"],
)
async def test_a_bad_request_is_answered_and_the_connection_goes_on(
    node_and_address, body, expected_id, words
):
    """A well-framed but invalid request gets bad_request (with its id when it has one)
    naming the problem; the same connection then serves the next request; nothing
    stored changes."""
    node, address = node_and_address
    data = encode_frame(body) + request_frame(100, "get", key=b"stored")
    answers, _ = await exchange(address, data, count=2)
    assert answers[0]["id"] == expected_id
    assert answers[0]["error"]["code"] == "bad_request"
    assert words in answers[0]["error"]["message"]
    assert answers[1] == {"id": 100, "ok": {"value": b"before", "version": 1}}
    assert node.engine.writes_applied == 1


async def test_a_body_that_is_not_cbor_is_bad_request_and_the_connection_goes_on(node_and_address):
    """Random bytes inside a well-formed frame: bad_request at id 0, connection kept."""
    node, address = node_and_address
    garbage = b"\xff\xfe\x00 not cbor"
    data = struct.pack(">II", len(garbage), crc32c.crc32c(garbage)) + garbage
    answers, _ = await exchange(address, data + request_frame(3, "ping"), count=2)
    assert answers[0]["error"]["code"] == "bad_request"
    assert answers[1] == {"id": 3, "ok": {}}


async def test_an_oversized_value_or_key_is_too_large_and_nothing_is_stored(node_and_address):
    """A value over value_size_max_bytes (or a key over key_size_max_bytes) in a frame that
    fits: too_large with the request's id; the connection goes on; nothing stored."""
    node, address = node_and_address
    data = (
        request_frame(1, "put", key=b"big", value=b"x" * (SMALL.value_size_max_bytes + 1))
        + request_frame(2, "put", key=b"k" * (SMALL.key_size_max_bytes + 1), value=b"v")
        + request_frame(3, "append", key=b"t", value=b"x" * (SMALL.value_size_max_bytes + 1))
        + request_frame(4, "get", key=b"big")
    )
    answers, _ = await exchange(address, data, count=4)
    assert [(answer["id"], answer["error"]["code"]) for answer in answers] == [
        (1, "too_large"), (2, "too_large"), (3, "too_large"), (4, "not_found"),
    ]
    assert node.engine.writes_applied == 1


async def test_a_client_vanishing_mid_frame_leaves_the_node_serving(node_and_address):
    """A client that resets its connection halfway through a frame (and one that leaves
    with writes in flight) costs the node nothing: its connection is dropped, the
    half-frame is never applied, and other clients are served."""
    node, address = node_and_address
    frame = request_frame(1, "put", key=b"stored", value=b"evil" * 100)
    stream = await open_raw(address)
    await stream.send_all(frame[:20])
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()  # SO_LINGER 0: a reset, not a goodbye
    leaver = await open_raw(address)
    await leaver.send_all(b"".join(request_frame(n, "put", key=b"left-%d" % n, value=b"v")
                                   for n in range(1, 51)))
    await leaver.aclose()
    await wait_until_async(lambda: not node.connections, "the node to drop both connections")
    await wait_until_async(lambda: node.engine.commit_queue_ops == 0, "pending writes to sync")
    await assert_still_serving(address)


async def test_a_connection_flood_past_connections_max_is_refused_overloaded(node_and_address):
    """With connections_max open, the next connection gets `overloaded` (id 0) and is
    closed; a Client on it sees Overloaded, a definite failure; once a connection closes,
    new clients are served again."""
    node, address = node_and_address
    held = [await open_raw(address) for _ in range(SMALL.connections_max)]
    await wait_until_async(lambda: len(node.connections) == SMALL.connections_max,
                           "every held connection to be registered")
    answers, closed = await exchange(address, request_frame(1, "ping"))
    assert closed
    assert [(answer["id"], answer["error"]["code"]) for answer in answers] == [(0, "overloaded")]
    async with Client(address) as client:
        with pytest.raises(Overloaded) as refused:
            await client.put(b"flood", b"v")
        assert not refused.value.indeterminate
    assert node.connections_refused >= 2
    await held.pop().aclose()
    await wait_until_async(lambda: len(node.connections) < SMALL.connections_max,
                           "a held connection to go")
    await assert_still_serving(address)
    for stream in held:
        await stream.aclose()
    assert node.engine.key_state(b"flood").version == 0


async def test_a_burst_of_writes_past_the_commit_queue_limit_gets_overloaded(node_and_address):
    """Writes arriving faster than group commit drains them, past commit_queue_ops_max, are
    answered `overloaded` (definite: not applied); every request is answered and the node
    takes writes again once the queue drains."""
    node, address = node_and_address
    burst = b"".join(request_frame(n, "put", key=b"burst-%d" % n, value=b"v") for n in range(1, 101))
    answers, _ = await exchange(address, burst, count=100)
    codes = {answer["id"]: answer.get("error", {}).get("code", "ok") for answer in answers}
    assert set(codes) == set(range(1, 101))
    refused = [n for n, code in codes.items() if code == "overloaded"]
    accepted = [n for n, code in codes.items() if code == "ok"]
    assert refused and accepted and len(refused) + len(accepted) == 100
    for n in refused:
        assert node.engine.key_state(b"burst-%d" % n).version == 0
    async with Client(address) as client:
        assert await client.put(b"burst-after", b"v") == 1


async def test_answers_to_pipelined_requests_on_one_connection_carry_their_ids(node_and_address):
    """Writes (which wait for a commit) and reads (answered at once) pipelined on one
    connection are each answered once with their own id."""
    node, address = node_and_address
    frames = []
    for n in range(1, 41):
        frames.append(request_frame(2 * n, "put", key=b"p-%d" % n, value=b"%d" % n))
        frames.append(request_frame(2 * n + 1, "get", key=b"stored"))
    answers, _ = await exchange(address, b"".join(frames[:20]), count=20)
    by_id = {answer["id"]: answer for answer in answers}
    assert len(by_id) == 20
    for request_id, answer in by_id.items():
        if request_id % 2:
            assert answer["ok"] == {"value": b"before", "version": 1}
        else:
            assert answer["ok"] == {"version": 1}


async def test_status_reports_the_node(node_and_address):
    """status answers at once with the node's counters."""
    node, address = node_and_address
    async with Client(address) as client:
        status = await client.status()
    assert status["node"] == "single"
    assert status["listen"] == [address]
    assert status["writes_applied"] == 1
    assert status["connections"] >= 1


async def test_a_client_that_never_reads_answers_does_not_grow_the_node_without_bound():
    """A client pipelining reads of a large value and never reading the answers: once the
    connection's unsent answers reach connection_outgoing_max_bytes the node stops taking
    its requests, instead of buffering every answer in memory (here 1000 answers of
    32 KiB, 32 MiB, against a 256 KiB limit)."""
    limits = Limits(value_size_max_bytes=32 * 1024, frame_size_max_bytes=64 * 1024,
                    connection_outgoing_max_bytes=256 * 1024)
    async with serving_node(limits=limits) as (node, address):
        async with Client(address) as client:
            await client.put(b"big", b"x" * limits.value_size_max_bytes)
        frames_taken = 0
        take_frame = node._on_frame

        def counting_frames(connection, body):
            nonlocal frames_taken
            frames_taken += 1
            return take_frame(connection, body)

        node._on_frame = counting_frames
        stream = await open_raw(address)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await stream.send_all(request_frame(1, "get", key=b"big") * 1000)
        # Wait until the node stops taking frames: a round trip on another connection
        # (which passes through the event loop many times) changes nothing any more.
        while True:
            before = frames_taken
            await assert_still_serving_value(address, b"big", limits.value_size_max_bytes)
            if frames_taken == before + 1:
                break
        await trio.aclose_forcefully(stream)
    answer_bytes_taken = (frames_taken - 1) * limits.value_size_max_bytes
    assert answer_bytes_taken < 1000 * limits.value_size_max_bytes, "took every request"
    assert answer_bytes_taken < 16 * 1024 * 1024  # socket buffers plus twice the limit


async def assert_still_serving_value(address: str, key: bytes, size: int) -> None:
    answers, _ = await exchange(address, request_frame(5, "get", key=key), count=1)
    assert len(answers[0]["ok"]["value"]) == size
