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
- incoming peer connections, recognised by that hello on the client port.
  The hello is a challenge-response over the group's secret (peer_auth.py):
  a link carries nothing, either way, until both ends proved they hold
  it, and a connection that fails to (no proof, a wrong or replayed one,
  none within PEER_HELLO_TIMEOUT_SECONDS, a frame over
  PEER_HELLO_FRAME_SIZE_MAX_BYTES) is closed, logged and counted in
  `peer_hellos_refused`. With TLS on (`--tls-cert`), links dial with TLS
  too and check the peer's certificate before saying hello;
- a ticker calling `replica.tick()` every `tick_seconds`;
- the streamer: steps do not send log records themselves; after a burst
  of steps (every request and peer message that one wake-up of the event
  loop brought in) it calls `replica.pump_streams()` once, so one
  StreamRecords per peer carries everything the burst appended;
- the committer, the one place the effects order is obeyed. A step's
  writes went to storage unsynced during the step; while a step that
  asked for a sync waits for it or a sync is running, every step's
  replies and late messages are held, and the committer syncs once (off
  the event loop) for all the steps gathered, then releases what they
  held, in order. Lazily durable writes (a learned decision, a stored
  payload, a cursor) ask for no sync and ride the next one. Early messages
  (messages.EARLY_MESSAGES: requests, decisions, our own log records)
  leave at once, so the peers' work runs alongside our sync. When nothing
  is unsynced, a step's messages leave at once.

A failed sync raises out of the committer and stops the node.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import random
import secrets
import signal
import ssl

import trio

from kvsvr.core.requests import Ping, Scan
from kvsvr.protocol.addresses import AddressError, format_address, parse_address
from kvsvr.protocol.errors import KvError, Unavailable
from kvsvr.protocol.limits import DEFAULT_LIMITS, Limits
from kvsvr.protocol.peer_auth import (
    KEY_ID_SIZE_BYTES,
    NONCE_SIZE_BYTES,
    PROOF_SIZE_BYTES,
    AcceptingHandshake,
    ConnectingHandshake,
    HelloRefused,
    PeerSecrets,
    cluster_id,
    quoted,
)
from kvsvr.protocol.wire import (
    REQUEST_ID_MAX,
    FrameDecoder,
    FrameError,
    answer_frame,
    decode_answer,
    decode_body,
    encode_frame,
    error_frame,
    frame_from_body,
)
from kvsvr.replication.codec import (
    ENVELOPE_HEADER_SIZE_MAX_BYTES,
    WIRE_VERSION,
    CodecError,
    decode_envelope,
    encode_message,
    envelope_body,
)
from kvsvr.replication.messages import STREAM_MESSAGES, Effects, Message
from kvsvr.replication.peer_input import PeerInputError
from kvsvr.replication.replica import Replica, ReplicaOptions
from kvsvr.shell.server import FrameServer, _Connection
from kvsvr.shell.tls import connect_tls
from kvsvr.storage import Storage

log = logging.getLogger("kvsvr.shell.replica_node")

CHANNELS = ("consensus", "stream")
# Messages, and their bytes, waiting on one outgoing peer link; past either,
# new messages are dropped (the protocol resends them).
PEER_QUEUE_MESSAGES_MAX = 10_000
PEER_QUEUE_MAX_BYTES = 64 * 1024 * 1024
# One envelope (one frame, one send): at most this many messages and bytes
# of messages; a message larger alone goes alone (it fits a frame: the
# replica's limits are checked against the frame size, options.py).
ENVELOPE_MESSAGES_MAX = 4096
ENVELOPE_MAX_BYTES = 1024 * 1024
# Reconnection backoff for a peer link, doubling from the minimum.
PEER_RECONNECT_MIN_SECONDS = 0.05
PEER_RECONNECT_MAX_SECONDS = 1.0
DEFAULT_TICK_SECONDS = 0.01
# A peer counts as reachable while it was heard from this recently (peers
# ack each other's streams every few ticks, so a live peer is heard often).
# With fewer than a majority reachable, requests are refused `unavailable`
# before anything is proposed: a definite failure, not a timeout.
PEER_ALIVE_SECONDS = 1.0
# From a peer hello to its proof, and from dialling a peer to sending ours
# (TLS handshake included): the hello is 1.5 round trips, so this is slack
# for a loaded machine, and all a stranger can hold a connection open for.
PEER_HELLO_TIMEOUT_SECONDS = 5.0
# The largest frame read during the hello (an answer or a proof is about 100
# bytes); the peer's frame limit applies only once it proved it is a member.
PEER_HELLO_FRAME_SIZE_MAX_BYTES = 1024
# How long a refused hello is given to read why.
PEER_REFUSAL_SECONDS = 1.0
_HELLO_REQUEST_ID = 1
_PROOF_REQUEST_ID = 2
# The hello's largest frame, the challenge, fits the hello's frame limit
# with room to spare (limits that depend on each other are checked together).
assert 2 * len(encode_frame({"id": REQUEST_ID_MAX, "ok": {
    "nonce": bytes(NONCE_SIZE_BYTES), "key": bytes(KEY_ID_SIZE_BYTES),
    "proof": bytes(PROOF_SIZE_BYTES)}})) <= PEER_HELLO_FRAME_SIZE_MAX_BYTES


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
        self.envelopes_sent = 0
        self.messages_sent = 0
        # Within the peer's frame (the group shares its limits): a message
        # alone always fits one (MESSAGE_OVERHEAD_BYTES covers the header).
        self.envelope_max_bytes = min(
            ENVELOPE_MAX_BYTES, node.limits.frame_size_max_bytes - ENVELOPE_HEADER_SIZE_MAX_BYTES
        )
        self.connected = False
        self.hellos_failed = 0
        self._last_failure: str | None = None
        self._ready = trio.Event()

    def send(self, message: Message) -> None:
        encoded = encode_message(message)
        if (
            len(self.queue) >= PEER_QUEUE_MESSAGES_MAX
            or self.queued_bytes + len(encoded) > PEER_QUEUE_MAX_BYTES
        ):
            self.dropped += 1
            return
        self.queue.append(encoded)
        self.queued_bytes += len(encoded)
        self._ready.set()

    async def run_forever(self) -> None:
        host, port = self.node.group[self.peer]
        own_host = self.node.group[self.node.node_id][0]
        backoff = PEER_RECONNECT_MIN_SECONDS
        while True:
            stream = await self._open_authenticated(host, port, own_host)
            if stream is None:
                await trio.sleep(backoff)
                backoff = min(backoff * 2, PEER_RECONNECT_MAX_SECONDS)
                continue
            backoff = PEER_RECONNECT_MIN_SECONDS
            try:
                async with stream:
                    self.connected = True
                    await self._send_queued(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                log.debug("link to n%d (%s) broke: %s", self.peer, self.channel, error)
            finally:
                self.connected = False

    async def _open_authenticated(self, host: str, port: int,
                                  own_host: str) -> trio.abc.Stream | None:
        """A connection to the peer on which both ends proved they are members of
        the group; None when none could be made (logged once per new reason)."""
        try:
            tcp_stream = await trio.open_tcp_stream(host, port, local_address=own_host)
        except OSError:
            return None
        stream: trio.abc.Stream = tcp_stream
        try:
            with trio.fail_after(self.node.peer_hello_timeout_seconds):
                if self.node.peer_tls is not None:
                    stream = await connect_tls(tcp_stream, self.node.peer_tls, host, f"n{self.peer}")
                await self._say_hello(stream)
        except trio.TooSlowError:
            failure = f"no answer within {self.node.peer_hello_timeout_seconds}s"
        except (HelloRefused, KvError) as error:  # KvError: Unavailable (TLS), a bad frame
            failure = str(error)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            failure = f"the connection broke ({error})"
        else:
            if self._last_failure is not None:
                log.info("peer hello to n%d (%s) succeeded", self.peer, self.channel)
            self._last_failure = None
            return stream
        self.hellos_failed += 1
        level = logging.DEBUG if failure == self._last_failure else logging.WARNING
        log.log(level, "peer hello to n%d (%s) failed: %s", self.peer, self.channel, failure)
        self._last_failure = failure
        await trio.aclose_forcefully(stream)
        return None

    async def _say_hello(self, stream: trio.abc.Stream) -> None:
        """The connecting half of the hello (peer_auth.py); raises HelloRefused."""
        node = self.node
        handshake = ConnectingHandshake(node.peer_secrets, node.cluster_id, node.node_id,
                                        self.peer, self.channel, secrets.token_bytes(NONCE_SIZE_BYTES),
                                        WIRE_VERSION)
        await stream.send_all(encode_frame({"id": _HELLO_REQUEST_ID, **handshake.hello()}))
        decoder = FrameDecoder(PEER_HELLO_FRAME_SIZE_MAX_BYTES)
        body = await receive_body(stream, decoder, PEER_HELLO_FRAME_SIZE_MAX_BYTES)
        if body is None:
            raise HelloRefused(f"n{self.peer} closed the connection without answering the hello")
        answer = decode_answer(body)
        if "error" in answer:
            error = answer["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise HelloRefused(f"n{self.peer} refused the hello: {message}")
        if not isinstance(answer.get("ok"), dict):
            raise HelloRefused(f"n{self.peer} answered the hello with no challenge")
        proof = handshake.on_challenge(answer["ok"])
        await stream.send_all(encode_frame({"id": _PROOF_REQUEST_ID, **proof}))

    async def _send_queued(self, stream: trio.abc.Stream) -> None:
        """Send everything queued, as soon as the link is free: one envelope
        per send, so messages queued while a send was running go together."""
        while True:
            if not self.queue:
                self._ready = trio.Event()
                await self._ready.wait()
            batch = [self.queue.popleft()]
            size = len(batch[0])
            while (self.queue and len(batch) < ENVELOPE_MESSAGES_MAX
                   and size + len(self.queue[0]) <= self.envelope_max_bytes):
                encoded = self.queue.popleft()
                batch.append(encoded)
                size += len(encoded)
            self.queued_bytes -= size
            self.envelopes_sent += 1
            self.messages_sent += len(batch)
            await stream.send_all(frame_from_body(envelope_body(batch)))


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
        peer_secrets: PeerSecrets,
        tick_seconds: float = DEFAULT_TICK_SECONDS,
        seed: int | None = None,
        tls: ssl.SSLContext | None = None,
        peer_tls: ssl.SSLContext | None = None,
        peer_hello_timeout_seconds: float = PEER_HELLO_TIMEOUT_SECONDS,
    ):
        # tls serves the port (clients and peers); peer_tls dials the peers.
        super().__init__(limits, tls)
        if (tls is None) != (peer_tls is None):
            raise ValueError("a node serving TLS dials its peers with TLS, and only then")
        if node_id not in group:
            raise ValueError(f"node id {node_id} is not in the group {sorted(group)}")
        if len(group) not in (3, 5):
            raise ValueError(f"a replica group has 3 or 5 members, not {len(group)}")
        self.node_id = node_id
        self.group = dict(group)
        self.storage = storage
        self.peer_secrets = peer_secrets
        self.cluster_id = cluster_id(self.group)
        self.peer_tls = peer_tls
        self.peer_hello_timeout_seconds = peer_hello_timeout_seconds
        self.peer_hellos_accepted = 0
        self.peer_hellos_refused = 0
        self.peer_hellos_broken = 0  # the other end left before the hello ended
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
        self.peer_envelopes_received = 0
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
            early, effects = effects.split()
            if effects.messages or effects.replies or effects.sync:
                self._held.append(effects)
                self._commit_wakeup.set()
            self._send_messages(early)  # they vouch for nothing the sync makes durable
            self._deliver_locally()
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

    def _send_messages(self, messages: list[tuple[int, Message]]) -> None:
        for destination, message in messages:
            if destination == self.node_id:
                self._local_inbox.append(message)
            else:
                self._links[(destination, channel_of(message))].send(message)

    def _dispatch(self, effects: Effects) -> None:
        self._send_messages(effects.messages)
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
        return self.replica.keyspace.read(request)

    def reachable_members(self) -> int:
        now = trio.current_time()
        heard = sum(1 for moment in self._last_heard.values() if now - moment < PEER_ALIVE_SECONDS)
        return 1 + heard

    def status_details(self) -> dict:
        links = {
            f"n{peer}/{channel}": {"connected": link.connected, "queued": len(link.queue),
                                   "dropped": link.dropped, "hellos_failed": link.hellos_failed,
                                   "messages_sent": link.messages_sent,
                                   "envelopes_sent": link.envelopes_sent}
            for (peer, channel), link in self._links.items()
        }
        return {
            "node_id": self.node_id,
            "group": {str(node): format_address(host, port) for node, (host, port) in self.group.items()},
            "incarnation": self.replica.incarnation,
            "syncs": self.syncs,
            "peer_messages_received": self.peer_messages_received,
            "peer_envelopes_received": self.peer_envelopes_received,
            "peer_links_dropped": self.peer_links_dropped,
            "peer_hellos_accepted": self.peer_hellos_accepted,
            "peer_hellos_refused": self.peer_hellos_refused,
            "peer_hellos_broken": self.peer_hellos_broken,
            "calls_in_flight": len(self._calls),
            "reachable_members": self.reachable_members(),
            # Writes this node coordinated and answered success, by path.
            "writes_fast_path": self.replica.writes_decided["fast_path"],
            "writes_prepared": self.replica.writes_decided["prepared"],
            "walks_started": self.replica.catch_up_counts["walks_started"],
            "states_installed": self.replica.catch_up_counts["states_installed"],
            "storage_records_written": self.replica.storage_counts["records_written"],
            "storage_batches_written": self.replica.storage_counts["batches_written"],
            "peer_messages_sent": sum(link.messages_sent for link in self._links.values()),
            "peer_envelopes_sent": sum(link.envelopes_sent for link in self._links.values()),
            "log_trimmed_through": list(self.replica.log_trimmed_through),
            "links": links,
        }

    # -- peers ---------------------------------------------------------------------

    def peer_takeover(self, hello: dict):
        return functools.partial(self._serve_peer, hello)

    async def _serve_peer(self, hello: dict, connection: _Connection) -> None:
        accepted = await self._accept_hello(hello, connection)
        if accepted is None:
            return
        source, rest = accepted
        self.release(connection)
        decoder = FrameDecoder(self.limits.frame_size_max_bytes)
        decoder.feed(rest)
        stream = connection.stream
        while True:
            try:
                while (body := decoder.next_body()) is not None:
                    envelope = decode_envelope(body)
                    self.peer_envelopes_received += 1
                    self.peer_messages_received += len(envelope)
                    self._last_heard[source] = trio.current_time()
                    for message in envelope:
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


    async def _accept_hello(self, hello: dict,
                            connection: _Connection) -> tuple[int, bytes] | None:
        """The accepting half of the hello (peer_auth.py), bounded in time and
        bytes: the authenticated peer's id and the bytes it sent past its proof,
        or None once the connection was refused."""
        handshake = AcceptingHandshake(self.peer_secrets, self.cluster_id, self.node_id,
                                       self.group, CHANNELS, secrets.token_bytes(NONCE_SIZE_BYTES),
                                       WIRE_VERSION)
        decoder = FrameDecoder(PEER_HELLO_FRAME_SIZE_MAX_BYTES)
        assert connection.decoder is not None, "a peer hello arrives through the client decoder"
        decoder.feed(connection.decoder.take_buffered())
        stream = connection.stream
        refusal = f"no proof within {self.peer_hello_timeout_seconds}s"
        with trio.move_on_after(self.peer_hello_timeout_seconds):
            try:
                challenge = handshake.on_hello(hello)
                await stream.send_all(answer_frame(hello["id"], challenge))
                body = await receive_body(stream, decoder, self.limits.receive_size_max_bytes)
                if body is None:
                    raise trio.BrokenResourceError("closed before the proof")
                source = handshake.on_proof(decode_body(body))
            except HelloRefused as error:
                refusal = error.reason
            except KvError as error:  # an oversized, broken or undecodable frame
                refusal = error.message
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                # The other end went away mid-hello (a peer restarting, or
                # someone knocking and leaving): nothing was refused.
                self.peer_hellos_broken += 1
                log.info("a peer hello from %s (claiming n%s) ended: the connection broke (%s)",
                         _remote_address(stream), quoted(hello.get("from")), error)
                return None
            else:
                self.peer_hellos_accepted += 1
                log.info("peer link from n%d (%s) authenticated", source, handshake.channel)
                return source, decoder.take_buffered()
        self.peer_hellos_refused += 1
        log.warning("refused a peer hello from %s (claiming n%s): %s",
                    _remote_address(stream), quoted(hello.get("from")), refusal)
        with trio.move_on_after(PEER_REFUSAL_SECONDS):
            try:
                await stream.send_all(error_frame(hello["id"], Unavailable(refusal)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        return None


async def receive_body(stream: trio.abc.Stream, decoder: FrameDecoder,
                       receive_size_bytes: int) -> bytes | None:
    """The next frame's body from the stream, None at its end; FrameError as the decoder raises."""
    while (body := decoder.next_body()) is None:
        data = await stream.receive_some(receive_size_bytes)
        if not data:
            return None
        decoder.feed(data)
    return body


def _remote_address(stream: trio.abc.Stream) -> str:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    try:
        host, port = stream.socket.getpeername()[:2]
    except (AttributeError, OSError):
        return "an unknown address"
    return format_address(host, port)


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
