"""TLS on the client port (kvsvr/shell/tls.py): round trips, and every mismatch failing
at once and clearly rather than hanging.

Nodes run in-process (`Node.serve` with a server context) except where the
sync client needs a node outside its own trio loop. Certificates come from
the session's `tls_files` (tests/tls_support.py), made fresh, never committed.
"""

from __future__ import annotations

import functools
import socket

import pytest
import trio
from kvsvr_test_support import exchange, request_frame, serving_node

from jepsen_tests.nodes import NodeProcess
from kvsvr.client import Client, Item, SyncClient
from kvsvr.protocol.errors import Overloaded, Unavailable
from kvsvr.protocol.limits import Limits
from kvsvr.shell.tls import accept_tls, server_context

# Every failure here must come well before any deadline the client was given.
FAILS_WITHIN_SECONDS = 5.0
PATIENT_CLIENT_SECONDS = 60.0


@pytest.fixture
def tls(tls_files):
    return server_context(str(tls_files.cert), str(tls_files.key))


async def test_a_client_trusting_the_ca_round_trips_with_a_tls_node(tls, tls_files):
    async with serving_node(tls=tls) as (node, address):
        async with Client(address, cacert=str(tls_files.ca_cert)) as client:
            assert await client.put(b"k", b"v") == 1
            assert await client.get(b"k") == Item(b"v", 1)
            status = await client.status()
    assert status["tls"] is True


async def test_a_plain_client_against_a_tls_node_fails_at_once_saying_so(tls, tls_files):
    """The node reads no frame from a plain connection: it answers one `unavailable`
    saying it wants TLS, and the client's call fails with it (definite: nothing
    was done), long before the client's deadline."""
    async with serving_node(tls=tls) as (node, address):
        async with Client(address, timeout_seconds=PATIENT_CLIENT_SECONDS) as plain:
            with trio.fail_after(FAILS_WITHIN_SECONDS):
                with pytest.raises(Unavailable, match="this node serves TLS only") as failure:
                    await plain.put(b"k", b"plain")
        assert not failure.value.indeterminate
        async with Client(address, cacert=str(tls_files.ca_cert)) as client:
            assert await client.get(b"k") is None
        assert node.engine.writes_applied == 0


async def test_plain_frames_sent_to_a_tls_node_are_never_executed(tls):
    async with serving_node(tls=tls) as (node, address):
        answers, closed = await exchange(address, request_frame(1, "put", key=b"k", value=b"v"))
    assert closed
    assert [(answer["id"], answer["error"]["code"]) for answer in answers] == [(0, "unavailable")]
    assert node.engine.writes_applied == 0


async def test_a_client_trusting_another_ca_refuses_the_node(tls, tls_files):
    async with serving_node(tls=tls) as (node, address):
        async with Client(address, cacert=str(tls_files.other_ca_cert)) as client:
            with trio.fail_after(FAILS_WITHIN_SECONDS):
                with pytest.raises(Unavailable, match="certificate verify failed"):
                    await client.put(b"k", b"v")
    assert node.engine.writes_applied == 0


async def test_a_tls_client_against_a_plain_node_fails_at_once_saying_so(tls_files):
    async with serving_node() as (node, address):
        async with Client(address, cacert=str(tls_files.ca_cert),
                          timeout_seconds=PATIENT_CLIENT_SECONDS) as client:
            with trio.fail_after(FAILS_WITHIN_SECONDS):
                with pytest.raises(Unavailable, match="TLS handshake failed"):
                    await client.put(b"k", b"v")
    assert node.engine.writes_applied == 0


async def test_a_stalled_tls_handshake_is_closed_after_its_timeout(tls):
    """A connection that starts a TLS record and sends nothing more gets no TLS
    stream, and its handshake ends at the timeout."""
    outcomes = []

    async def handler(stream: trio.SocketStream) -> None:
        outcomes.append(await accept_tls(stream, tls, timeout_seconds=0.2))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0,
                                                          host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"\x16")
            with trio.fail_after(FAILS_WITHIN_SECONDS):
                while not outcomes:
                    await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert outcomes == [None]


async def test_connections_in_their_tls_handshake_count_towards_connections_max(tls, tls_files):
    """Two connections that never finish a handshake fill a node allowing two: the
    next client is answered `overloaded` (inside TLS, so it can read it)."""
    limits = Limits(connections_max=2)
    async with serving_node(limits=limits, tls=tls) as (node, address):
        host, port = address.rsplit(":", 1)
        stalled = [socket.create_connection((host, int(port))) for _ in range(2)]
        try:
            for connection in stalled:
                connection.sendall(b"\x16")
            async with Client(address, cacert=str(tls_files.ca_cert)) as client:
                with trio.fail_after(FAILS_WITHIN_SECONDS):
                    with pytest.raises(Overloaded, match="at most 2 connections"):
                        await client.put(b"k", b"v")
        finally:
            for connection in stalled:
                connection.close()
        assert node.connections_refused == 1


def test_sync_client_round_trip_over_tls(tmp_path, tls_files):
    """`kvsvr serve --tls-cert --tls-key` as a process, and SyncClient(cacert=...)."""
    node = NodeProcess(tmp_path / "node", extra_args=(
        "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key))).start()
    try:
        with SyncClient(node.address, cacert=str(tls_files.ca_cert)) as client:
            assert client.put(b"k", b"v1") == 1
            assert client.get(b"k") == Item(b"v1", 1)
            assert client.status()["tls"] is True
    finally:
        node.kill()
