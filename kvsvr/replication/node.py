"""The replica node shell: a Replica on real sockets, disks and clocks (trio).

Theory of operation. The core (replica.py) decides; this shell only moves
bytes, keeps time and syncs. It runs:

- the client side it shares with the single node (server.FrameServer):
  each request becomes `replica.submit(call_id, request)`, and the answer
  goes back on the connection it came from;
- two outgoing links per peer, one per channel: the consensus link carries
  small messages, the stream link carries the replication log, so a Prepare
  never waits behind payload bytes. Each link is a bounded queue drained by
  one task that (re)connects from this node's own address, says hello
  (`{"op": "peer", "from": N, "channel": C}`) and writes every queued
  frame in one send. A full queue drops the message: every message is
  retried by the protocol (rounds resend, the stream resends from the ack);
- incoming peer connections, recognised by that hello on the client port;
- a ticker calling `replica.tick()` every `tick_seconds`;
- the streamer: steps do not send log records themselves; after a burst
  of steps (every request and peer message that one wake-up of the event
  loop brought in) it calls `replica.pump_streams()` once, so one
  StreamRecords per peer carries everything the burst appended;
- the committer, the one place the effects order is obeyed. A step's
  writes went to storage unsynced during the step; while any write is
  unsynced or a sync is running, every step's messages and replies are
  held, and the committer syncs once (off the event loop) for all the
  steps gathered, then releases what they held, in order. When nothing is
  unsynced, a step's messages leave at once.

A failed sync raises out of the committer and stops the node.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import random
import signal

import trio

from kvsvr.addresses import AddressError, parse_address
from kvsvr.errors import KvError, Unavailable
from kvsvr.limits import DEFAULT_LIMITS, Limits
from kvsvr.model import value_or_not_found
from kvsvr.replication.codec import CodecError, decode_message, encode_message
from kvsvr.replication.messages import STREAM_MESSAGES, Effects, Message
from kvsvr.replication.peer_input import PeerInputError
from kvsvr.replication.replica import Replica, ReplicaOptions
from kvsvr.requests import Get, Ping, Scan
from kvsvr.server import FrameServer, _Connection
from kvsvr.storage import Storage
from kvsvr.wire import (
    FrameDecoder,
    FrameError,
    answer_frame,
    encode_frame,
    error_frame,
    frame_from_body,
)

log = logging.getLogger("kvsvr.replication.node")

CHANNELS = ("consensus", "stream")
# Frames, and their bytes, waiting on one outgoing peer link; past either,
# new messages are dropped (the protocol resends them).
PEER_QUEUE_MESSAGES_MAX = 10_000
PEER_QUEUE_MAX_BYTES = 64 * 1024 * 1024
# Bytes written to a peer link in one send.
PEER_SEND_BATCH_MAX_BYTES = 1024 * 1024
# Reconnection backoff for a peer link, doubling from the minimum.
PEER_RECONNECT_MIN_SECONDS = 0.05
PEER_RECONNECT_MAX_SECONDS = 1.0
DEFAULT_TICK_SECONDS = 0.01
# A peer counts as reachable while it was heard from this recently (peers
# ack each other's streams every few ticks, so a live peer is heard often).
# With fewer than a majority reachable, requests are refused `unavailable`
# before anything is proposed: a definite failure, not a timeout.
PEER_ALIVE_SECONDS = 1.0


def channel_of(message: Message) -> str:
    return "stream" if isinstance(message, STREAM_MESSAGES) else "consensus"


class _PeerLink:
    """One outgoing connection to one peer, for one channel."""

    def __init__(self, node: ReplicaNode, peer: int, channel: str):
        self.node = node
        self.peer = peer
        self.channel = channel
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self.dropped = 0
        self.connected = False
        self._ready = trio.Event()

    def send(self, message: Message) -> None:
        frame = frame_from_body(encode_message(message))
        if (
            len(self.queue) >= PEER_QUEUE_MESSAGES_MAX
            or self.queued_bytes + len(frame) > PEER_QUEUE_MAX_BYTES
        ):
            self.dropped += 1
            return
        self.queue.append(frame)
        self.queued_bytes += len(frame)
        self._ready.set()

    async def run_forever(self) -> None:
        host, port = self.node.group[self.peer]
        own_host = self.node.group[self.node.node_id][0]
        backoff = PEER_RECONNECT_MIN_SECONDS
        while True:
            try:
                stream = await trio.open_tcp_stream(host, port, local_address=own_host)
            except OSError:
                await trio.sleep(backoff)
                backoff = min(backoff * 2, PEER_RECONNECT_MAX_SECONDS)
                continue
            backoff = PEER_RECONNECT_MIN_SECONDS
            try:
                async with stream:
                    hello = {"id": 1, "op": "peer", "from": self.node.node_id, "channel": self.channel}
                    await stream.send_all(encode_frame(hello))
                    self.connected = True
                    await self._send_queued(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                log.debug("link to n%d (%s) broke: %s", self.peer, self.channel, error)
            finally:
                self.connected = False

    async def _send_queued(self, stream: trio.SocketStream) -> None:
        while True:
            if not self.queue:
                self._ready = trio.Event()
                await self._ready.wait()
            chunk = bytearray()
            while self.queue and len(chunk) < PEER_SEND_BATCH_MAX_BYTES:
                frame = self.queue.popleft()
                self.queued_bytes -= len(frame)
                chunk += frame
            await stream.send_all(chunk)


class ReplicaNode(FrameServer):
    """A member of a replica group: the Replica core, its peers and its clients."""

    kind = "replica"

    def __init__(
        self,
        node_id: int,
        group: dict[int, tuple[str, int]],
        storage: Storage,
        limits: Limits = DEFAULT_LIMITS,
        options: ReplicaOptions | None = None,
        *,
        tick_seconds: float = DEFAULT_TICK_SECONDS,
        seed: int | None = None,
    ):
        super().__init__(limits)
        if node_id not in group:
            raise ValueError(f"node id {node_id} is not in the group {sorted(group)}")
        if len(group) not in (3, 5):
            raise ValueError(f"a replica group has 3 or 5 members, not {len(group)}")
        self.node_id = node_id
        self.group = dict(group)
        self.storage = storage
        self.tick_seconds = tick_seconds
        rng = random.Random(seed if seed is not None else random.SystemRandom().getrandbits(64))
        options = dataclasses.replace(options or ReplicaOptions(), stream_pump_each_step=False)
        self.replica = Replica(node_id, tuple(group), storage, rng, options, limits)
        self._stream_wanted = trio.Event()
        self._links = {
            (peer, channel): _PeerLink(self, peer, channel)
            for peer in group
            if peer != node_id
            for channel in CHANNELS
        }
        self._held: list[Effects] = []
        self._unsynced = False
        self._sync_running = False
        self._commit_wakeup = trio.Event()
        self._local_inbox: collections.deque[Message] = collections.deque()
        self._delivering_locally = False
        self._calls: dict[int, tuple[_Connection, int]] = {}
        self._next_call_id = 1
        self.syncs = 0
        self.peer_messages_received = 0
        # Incoming peer links dropped for bad input (an undecodable frame, or
        # a message that failed the checks of peer_input.py).
        self.peer_links_dropped = 0
        self._last_heard: dict[int, float] = {}

    # -- serving -----------------------------------------------------------------

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.group[self.node_id]
        # Peers count as heard at start, so a fresh group serves at once.
        self._last_heard = {peer: trio.current_time() for peer in self.group if peer != self.node_id}
        # R1: the new incarnation is synced before anything is sent.
        effects = self.replica.start()
        assert not effects.messages and not effects.replies
        await trio.to_thread.run_sync(self.storage.sync)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._commit_forever)
                nursery.start_soon(self._tick_forever)
                nursery.start_soon(self._stream_forever)
                for link in self._links.values():
                    nursery.start_soon(link.run_forever)
                task_status.started(await self.listen(nursery, host, port))
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.storage.sync)

    async def _tick_forever(self) -> None:
        while True:
            await trio.sleep(self.tick_seconds)
            self._carry_out(self.replica.tick())

    async def _stream_forever(self) -> None:
        while True:
            await self._stream_wanted.wait()
            self._stream_wanted = trio.Event()
            # Let every task the same wake-up made runnable take its steps first.
            await trio.lowlevel.cancel_shielded_checkpoint()
            self._carry_out(self.replica.pump_streams())

    def _step(self, source: int, message: Message) -> None:
        self._carry_out(self.replica.step(source, message))
        self._stream_wanted.set()

    # -- the effects order ----------------------------------------------------------

    def _carry_out(self, effects: Effects) -> None:
        if effects.sync:
            self._unsynced = True
        if self._unsynced or self._sync_running or self._held:
            if effects.messages or effects.replies or effects.sync:
                self._held.append(effects)
                self._commit_wakeup.set()
            return
        self._dispatch(effects)

    async def _commit_forever(self) -> None:
        while True:
            await self._commit_wakeup.wait()
            self._commit_wakeup = trio.Event()
            if not self._held and not self._unsynced:
                continue
            held, self._held = self._held, []
            if self._unsynced:
                self._unsynced = False
                self._sync_running = True
                try:
                    # Not cancellable: a shutdown waits for the sync in progress.
                    await trio.to_thread.run_sync(self.storage.sync)
                finally:
                    self._sync_running = False
                self.syncs += 1
            for effects in held:
                self._dispatch(effects)
            if self._held or self._unsynced:
                self._commit_wakeup.set()

    def _dispatch(self, effects: Effects) -> None:
        for destination, message in effects.messages:
            if destination == self.node_id:
                self._local_inbox.append(message)
            else:
                self._links[(destination, channel_of(message))].send(message)
        for call_id, answer in effects.replies:
            caller = self._calls.pop(call_id, None)
            if caller is None:
                continue
            connection, request_id = caller
            if isinstance(answer, KvError):
                connection.answer_waited(error_frame(request_id, answer))
            else:
                connection.answer_waited(answer_frame(request_id, answer))
        self._deliver_locally()

    def _deliver_locally(self) -> None:
        """Our own votes go through the same step as everyone's, one at a time."""
        if self._delivering_locally:
            return
        self._delivering_locally = True
        try:
            while self._local_inbox:
                self._step(self.node_id, self._local_inbox.popleft())
        finally:
            self._delivering_locally = False

    # -- clients -------------------------------------------------------------------

    def handle_request(self, connection: _Connection, request_id: int, request) -> None:
        if isinstance(request, Ping):
            connection.queue(answer_frame(request_id, {}))
            return
        if isinstance(request, Scan) or getattr(request, "stale", False):
            # Scans and stale reads answer from this replica's applied state,
            # without a quorum, and say so.
            try:
                result = dict(self._read_locally(request))
            except KvError as error:
                connection.queue(error_frame(request_id, error))
                return
            result["stale"] = True
            connection.queue(answer_frame(request_id, result))
            return
        reachable = self.reachable_members()
        if reachable < self.replica.majority:
            connection.queue(error_frame(request_id, Unavailable(
                f"only {reachable} of {len(self.group)} members are reachable; "
                f"a majority ({self.replica.majority}) is needed")))
            return
        call_id = self._next_call_id
        self._next_call_id += 1
        self._calls[call_id] = (connection, request_id)
        connection.requests_in_flight += 1
        self._carry_out(self.replica.submit(call_id, request))
        self._stream_wanted.set()

    def _read_locally(self, request) -> dict:
        if isinstance(request, Get):
            state = value_or_not_found(request.key, self.replica.keyspace.key_state(request.key))
            return {"value": state.value, "version": state.version}
        return self.replica.keyspace.read(request)

    def reachable_members(self) -> int:
        now = trio.current_time()
        heard = sum(1 for moment in self._last_heard.values() if now - moment < PEER_ALIVE_SECONDS)
        return 1 + heard

    def status_details(self) -> dict:
        links = {
            f"n{peer}/{channel}": {"connected": link.connected, "queued": len(link.queue),
                                   "dropped": link.dropped}
            for (peer, channel), link in self._links.items()
        }
        return {
            "node_id": self.node_id,
            "group": {str(node): f"{host}:{port}" for node, (host, port) in self.group.items()},
            "incarnation": self.replica.incarnation,
            "syncs": self.syncs,
            "peer_messages_received": self.peer_messages_received,
            "peer_links_dropped": self.peer_links_dropped,
            "calls_in_flight": len(self._calls),
            "reachable_members": self.reachable_members(),
            # Writes this node coordinated and answered success, by path.
            "writes_fast_path": self.replica.writes_decided["fast_path"],
            "writes_prepared": self.replica.writes_decided["prepared"],
            "walks_started": self.replica.catch_up_counts["walks_started"],
            "states_installed": self.replica.catch_up_counts["states_installed"],
            "log_trimmed_through": list(self.replica.log_trimmed_through),
            "links": links,
        }

    # -- peers ---------------------------------------------------------------------

    def peer_takeover(self, hello: dict):
        source = hello.get("from")
        if not isinstance(source, int) or source not in self.group or source == self.node_id:
            raise Unavailable(f"peer hello from a node not in this group: {source!r}")
        if hello.get("channel") not in CHANNELS:
            raise Unavailable(f"peer hello names no channel: {hello.get('channel')!r}")
        return functools.partial(self._serve_peer, source)

    async def _serve_peer(self, source: int, connection: _Connection) -> None:
        decoder = connection.decoder or FrameDecoder(self.limits.frame_size_max_bytes)
        stream = connection.stream
        while True:
            try:
                while (body := decoder.next_body()) is not None:
                    message = decode_message(body)
                    self.peer_messages_received += 1
                    self._last_heard[source] = trio.current_time()
                    self._step(source, message)
            except (FrameError, CodecError, PeerInputError) as error:
                # Bad input from a peer: nothing of it was acted on (the
                # replica checks a message before it changes anything).
                self.peer_links_dropped += 1
                log.warning("dropping the link from n%d: %s", source, error)
                return
            try:
                data = await stream.receive_some(self.limits.receive_size_max_bytes)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            decoder.feed(data)


def parse_group(text: str) -> dict[int, tuple[str, int]]:
    """`1=HOST:PORT,2=HOST:PORT,3=HOST:PORT` -> {1: (host, port), ...}."""
    group: dict[int, tuple[str, int]] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        node_text, separator, address = part.partition("=")
        if not separator or not node_text.strip().isdigit():
            raise AddressError(f"group member {part!r} is not N=HOST:PORT")
        node_id = int(node_text)
        if node_id in group:
            raise AddressError(f"node {node_id} appears twice in the group")
        group[node_id] = parse_address(address)
    if len(group) not in (3, 5):
        raise AddressError(f"a replica group has 3 or 5 members, not {len(group)}")
    return group


async def run_replica_until_signalled(node: ReplicaNode) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly (sync, close storage)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(node.serve)
            print(
                f"kvsvr node {node.node_id} of {len(node.group)} listening on "
                f"{', '.join(addresses)}",
                flush=True,
            )
            async for signum in signals:
                log.info("received %s; stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    node.storage.close()


__all__ = ["ReplicaNode", "parse_group", "run_replica_until_signalled"]
