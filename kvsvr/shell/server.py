"""The node shell: trio server, connections, and the group committer.

Theory of operation. The engine (engine.py) decides; this module only
moves bytes and waits. It runs three kinds of task:

- one per connection, reading frames, handing each request to the engine,
  and queueing the answers that are ready at once into the connection's
  outgoing buffer (several answers go out in one send);
- one sender per connection, writing that buffer whenever it has bytes;
- one committer, which cuts the engine's open batch, writes it with one
  sync in a worker thread while the next batch fills, and only then
  releases the answers waiting on it (writes, and reads of keys whose
  newest state was in it). An answer never leaves before the state behind
  it is synced.

Bounds: `connections_max` open connections (the next is answered
`overloaded` and closed), `connection_requests_in_flight_max` requests and
`connection_outgoing_max_bytes` of unsent answers per connection (past
either, the reader stops taking requests, so TCP pushes back on the client),
`commit_queue_ops_max` records waiting for commit (past it writes are
answered `overloaded`), `frame_size_max_bytes` per frame. Connections
still in their TLS handshake count towards `connections_max`.

With a TLS context (`kvsvr serve --tls-cert/--tls-key`) every accepted
connection is wrapped in TLS before its first frame is read (tls.py); a
connection whose hello says it is a peer is handed over, TLS and all.

A failed write or fsync raises out of the committer and stops the node:
after a failed fsync the page cache can't be trusted to match the disk.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import ssl
import time
from collections import defaultdict

import trio

from kvsvr.core.engine import Engine, Result
from kvsvr.core.requests import Status, parse_request
from kvsvr.protocol.addresses import format_address
from kvsvr.protocol.errors import BadRequest, KvError, Overloaded
from kvsvr.protocol.limits import DEFAULT_LIMITS, Limits
from kvsvr.protocol.wire import FrameDecoder, FrameError, answer_frame, decode_body, error_frame
from kvsvr.shell.outgoing import Outgoing
from kvsvr.shell.tls import TLS_HANDSHAKE_TIMEOUT_SECONDS, accept_tls
from kvsvr.storage import Storage

log = logging.getLogger("kvsvr.shell.server")


class _Connection:
    """One client connection: its stream, outgoing buffer and in-flight count."""

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.outgoing = Outgoing()
        self.requests_in_flight = 0
        self.closed = False
        self.receiving_done = False
        self.decoder: FrameDecoder | None = None  # kept for a peer takeover
        self._room_for_requests = trio.Event()

    def queue(self, frame: bytes) -> None:
        if not self.closed:
            self.outgoing.add(frame)

    def answer_waited(self, frame: bytes) -> None:
        """Queue the answer of a request that waited for a commit."""
        self.requests_in_flight -= 1
        self._room_for_requests.set()
        self.queue(frame)

    async def wait_for_room(self, requests_in_flight_max: int, outgoing_max_bytes: int) -> None:
        """Wait until another request may be taken: few enough in flight, and few
        enough answer bytes waiting for the client to read them."""
        while (
            self.requests_in_flight >= requests_in_flight_max
            or len(self.outgoing) >= outgoing_max_bytes
        ):
            self._room_for_requests = trio.Event()
            await self._room_for_requests.wait()

    def finish_receiving(self) -> None:
        self.receiving_done = True
        self.outgoing.wake()

    async def send_until_done(self) -> None:
        """Send queued answers; return once the client stopped sending and is owed nothing."""
        while True:
            if not self.outgoing:
                if self.receiving_done and self.requests_in_flight == 0:
                    return
                await self.outgoing.wait()
                continue
            data = self.outgoing.take()
            self._room_for_requests.set()
            await self.stream.send_all(data)


class FrameServer:
    """Client connections and their frames; what a request does is the subclass's.

    A subclass implements `handle_request(connection, request_id, request)`,
    answering at once with `connection.queue(...)` or later (after a sync)
    with `connection.answer_waited(...)` after raising
    `connection.requests_in_flight`. A connection whose first frame is
    `{"op": "peer", ...}` is handed to `peer_takeover` (replica groups),
    still counted in `connections` until the takeover calls `release`.
    """

    kind = "frame-server"

    def __init__(self, limits: Limits, tls: ssl.SSLContext | None = None):
        self.limits = limits
        self.tls = tls
        self.connections: set[_Connection] = set()
        self.started_at = time.monotonic()
        self.listen_addresses: list[str] = []
        self.connections_refused = 0
        self._connections_opening = 0  # accepted, in their TLS handshake

    async def listen(self, nursery: trio.Nursery, host: str, port: int) -> list[str]:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, self._handle_connection, port, host=host)
        )
        self.listen_addresses = [_address(listener) for listener in listeners]
        return self.listen_addresses

    def handle_request(self, connection: _Connection, request_id: int, request) -> None:
        raise NotImplementedError  # each kind of node answers requests its own way

    def peer_takeover(self, hello: dict):
        """The coroutine function that serves a peer connection, given its hello."""
        raise BadRequest("this node is not in a replica group: no peer connections")

    def release(self, connection: _Connection) -> None:
        """A taken-over connection stops counting as a client's (an authenticated peer)."""
        self.connections.discard(connection)

    def status_details(self) -> Result:
        return {}

    def status(self) -> Result:
        return {
            "node": self.kind,
            "listen": self.listen_addresses,
            "uptime_seconds": math.floor(time.monotonic() - self.started_at),
            "connections": len(self.connections),
            "connections_refused": self.connections_refused,
            "tls": self.tls is not None,
            **self.status_details(),
        }

    async def _handle_connection(self, tcp_stream: trio.SocketStream) -> None:
        refused = len(self.connections) + self._connections_opening >= self.limits.connections_max
        stream: trio.abc.Stream | None = tcp_stream
        if self.tls is not None:
            # A refusal is answered inside TLS too, so the client can read it.
            handshake_seconds = _REFUSAL_SECONDS if refused else TLS_HANDSHAKE_TIMEOUT_SECONDS
            self._connections_opening += 1
            try:
                stream = await accept_tls(tcp_stream, self.tls, handshake_seconds)
            finally:
                self._connections_opening -= 1
            if stream is None:
                await trio.aclose_forcefully(tcp_stream)
                return
        if refused:
            self.connections_refused += 1
            await _refuse(stream, self.limits.connections_max)
            return
        connection = _Connection(stream)
        self.connections.add(connection)
        takeover = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_until_broken, connection, nursery.cancel_scope)
                takeover = await self._receive_until_closed(connection)
                # The sender finishes once every answer owed has gone out.
                connection.finish_receiving()
            if takeover is not None:
                await takeover(connection)
        finally:
            connection.closed = True
            self.connections.discard(connection)
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await stream.aclose()

    async def _send_until_broken(self, connection: _Connection, scope: trio.CancelScope) -> None:
        try:
            await connection.send_until_done()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()  # the client went away; stop reading too

    async def _receive_until_closed(self, connection: _Connection):
        decoder = connection.decoder = FrameDecoder(self.limits.frame_size_max_bytes)
        receive_size = self.limits.receive_size_max_bytes
        in_flight_max = self.limits.connection_requests_in_flight_max
        outgoing_max = self.limits.connection_outgoing_max_bytes
        while True:
            # Checked before every frame, not every receive: one receive can
            # hold thousands of small requests with large answers.
            await connection.wait_for_room(in_flight_max, outgoing_max)
            try:
                body = decoder.next_body()
            except FrameError as error:
                log.info("closing a connection after a framing error: %s", error.message)
                connection.queue(error_frame(0, error.error))
                return None
            if body is not None:
                takeover = self._on_frame(connection, body)
                if takeover is not None:
                    return takeover
                continue
            try:
                data = await connection.stream.receive_some(receive_size)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            decoder.feed(data)

    def _on_frame(self, connection: _Connection, body: bytes):
        request_id = 0
        try:
            message = decode_body(body)
            request_id = message["id"]
            if message.get("op") == "peer":
                return self.peer_takeover(message)
            request = parse_request(message, self.limits)
            if isinstance(request, Status):
                connection.queue(answer_frame(request_id, self.status()))
                return None
            self.handle_request(connection, request_id, request)
        except KvError as error:
            connection.queue(error_frame(getattr(error, "request_id", request_id), error))
        return None


class Node(FrameServer):
    """A single KVSvr node serving clients from one storage."""

    kind = "single"

    def __init__(self, storage: Storage, limits: Limits = DEFAULT_LIMITS,
                 tls: ssl.SSLContext | None = None):
        super().__init__(limits, tls)
        self.storage = storage
        self.engine = Engine(storage, limits)
        # generation -> [(connection, request id, answer or function computing it)]
        self._waiting_for_commit: dict[int, list] = defaultdict(list)
        self._batch_ready = trio.Event()

    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled, then flush what is pending."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._commit_forever)
                task_status.started(await self.listen(nursery, host, port))
        finally:
            with trio.CancelScope(shield=True):
                await self._flush_pending()

    async def _flush_pending(self) -> None:
        """Write whatever is left in the open batch, so a clean stop loses nothing."""
        batch = self.engine.take_batch()
        if batch is not None:
            generation, writes = batch
            await trio.to_thread.run_sync(self.storage.write, writes, True)
            self.engine.batch_synced(generation, len(writes))

    async def _commit_forever(self) -> None:
        engine = self.engine
        while True:
            await self._batch_ready.wait()
            self._batch_ready = trio.Event()
            batch = engine.take_batch()
            if batch is None:
                continue
            generation, writes = batch
            # The sync is not cancellable: a shutdown waits for it, so a batch
            # is either fully synced and answered, or never answered.
            await trio.to_thread.run_sync(self.storage.write, writes, True)
            engine.batch_synced(generation, len(writes))
            for connection, request_id, answer in self._waiting_for_commit.pop(generation, ()):
                connection.answer_waited(_answer(request_id, answer))

    def handle_request(self, connection: _Connection, request_id: int, request) -> None:
        outcome = self.engine.execute(request)
        if outcome.generation == 0:
            connection.queue(_answer(request_id, outcome.result))
            return
        connection.requests_in_flight += 1
        self._waiting_for_commit[outcome.generation].append((connection, request_id, outcome.result))
        self._batch_ready.set()

    def status_details(self) -> Result:
        return self.engine.statistics()


def _answer(request_id: int, answer) -> bytes:
    try:
        result = answer() if callable(answer) else answer
    except KvError as error:
        return error_frame(request_id, error)
    return answer_frame(request_id, result)


# How long a refused connection is given to read its refusal (and, with TLS,
# to finish the handshake that lets it read it).
_REFUSAL_SECONDS = 1.0


async def _refuse(stream: trio.abc.Stream, connections_max: int) -> None:
    error = Overloaded(f"the node serves at most {connections_max} connections; retry later")
    with trio.move_on_after(_REFUSAL_SECONDS):
        try:
            await stream.send_all(error_frame(0, error))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)


def _address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return format_address(host, port)


async def run_until_signalled(node: Node, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly (flush, close storage)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(node.serve, host, port)
            print(f"kvsvr listening on {', '.join(addresses)}", flush=True)
            async for signum in signals:
                log.info("received %s; stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    node.storage.close()


__all__ = ["Node", "run_until_signalled"]
