"""The replica: per-key Paxos on versions, sans-IO.

Theory of operation. A replica is a plain object driven by four calls,
each returning `Effects` (messages.py says in which order the shell must
carry them out): `start()` once, `submit()` for a client request, `step()`
for a message from a peer (or from itself: a replica votes through the
same path as everyone else), and `tick()` for the passing of time. It
never awaits, reads a clock or draws an unseeded random number; it writes
to its storage unsynced and asks the shell to sync before anything leaves.

Every node plays every part for every key of its group. Each part is an
object that owns its state, in its own module that opens with its theory,
and reaches the others only through their public methods
(`self.proposer.drive(key)`), and only those it names in its `USES`:

- acceptor.py: the acceptor (Prepare, Accept; R4, R5, R8) and the learner
  (decisions from anywhere, applied in version order);
- proposer.py: coordinating writes (Prepare, recovery, the fast path,
  batching; R2, R6, R7, R9);
- reads.py: linearizable reads (R10) and the confirmation of failed
  conditions (R7);
- catch_up.py: pulling missing payloads, state (R12) and decisions from
  peers;
- log_stream.py: the node's own log, its stream to each peer, and its
  trimming (R11);
- payloads.py: where payload bytes live, what pins them, collecting them;
- core.py: what they share (identity, storage, effects, per-key records).

This module composes them (`Replica.acceptor`, `.proposer`, `.reads`,
`.catch_up`, `.log_stream`, `.payloads`, over one `core`), connects each to
the parts it uses, and holds the one dispatch point: `step` routes every
message to the handler of the part it belongs to, once the message has
passed the checks of peer_input.py (a peer is outside: a message that fails
them raises PeerInputError before anything changes). tests/replication/
test_parts.py checks that no part reaches into another's private state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvsvr.core.requests import Get, Request, Sync, TableGet, TableRows, Write
from kvsvr.protocol.errors import Unavailable
from kvsvr.protocol.limits import DEFAULT_LIMITS, Limits
from kvsvr.replication import durable
from kvsvr.replication.acceptor import Acceptor
from kvsvr.replication.catch_up import CatchUp
from kvsvr.replication.core import Part, ReplicaCore, decode_int, encode_value
from kvsvr.replication.log_stream import LogStream
from kvsvr.replication.messages import (
    ZERO_BALLOT,
    Accept,
    Accepted,
    Commit,
    DecisionRecord,
    DecisionsReply,
    Effects,
    FetchDecisions,
    FetchPayload,
    FetchState,
    Instance,
    Message,
    PayloadRecord,
    PayloadReply,
    Prepare,
    Promise,
    Read,
    ReadReply,
    StateReply,
    StreamAck,
    StreamRecords,
    StreamTrimmed,
)
from kvsvr.replication.options import DEFAULT_OPTIONS, ReplicaOptions, check_consistent
from kvsvr.replication.payloads import PayloadStore
from kvsvr.replication.peer_input import PeerInputError, check_message, held_payload_count
from kvsvr.replication.proposer import Proposer
from kvsvr.replication.reads import ClientRead, Reads
from kvsvr.storage import Family

if TYPE_CHECKING:
    import random

    from kvsvr.replication.events import Event


class Replica(Part):
    """The parts of one replica, composed: the only object a shell touches."""

    def __init__(
        self,
        node_id: int,
        members: tuple[int, ...],
        storage,
        rng: random.Random,
        options: ReplicaOptions = DEFAULT_OPTIONS,
        limits: Limits = DEFAULT_LIMITS,
        observer: Callable[[Event], None] | None = None,
    ):
        check_consistent(options, limits)  # ValueError: limits that contradict each other
        core = ReplicaCore(node_id, members, storage, rng, options, limits, observer)
        super().__init__(core)
        self.acceptor = Acceptor(core)
        self.catch_up = CatchUp(core)
        self.proposer = Proposer(core)
        self.reads = Reads(core)
        self.log_stream = LogStream(core)
        self.payloads = PayloadStore(core)
        for part in (self.acceptor, self.catch_up, self.proposer, self.reads, self.log_stream,
                     self.payloads):
            part.connect(**{name: getattr(self, name) for name in part.USES})
        self._take_effects = core._take_effects

    # -- what a shell or a test may read -------------------------------------------

    @property
    def started(self) -> bool:
        return self.core.started

    @property
    def writes_decided(self):
        """Writes answered success, by path ("fast_path" or "prepared")."""
        return self.proposer.writes_decided

    @property
    def catch_up_counts(self):
        return self.core.catch_up_counts

    @property
    def storage_counts(self) -> dict[str, int]:
        """Records this replica wrote to its storage, and the batches they went in."""
        return {"records_written": self.core.storage.records_written,
                "batches_written": self.core.storage.batches_written}

    def consensus_snapshot(self, key: bytes):
        return self.core.consensus_snapshot(key)

    @property
    def log_trimmed_through(self):
        return self.log_stream.log_trimmed_through

    # -- the four entry points -------------------------------------------------

    def start(self) -> Effects:
        """Raise and sync the incarnation before anything is sent (R1)."""
        assert not self.started
        stored = self.storage.get(Family.META, durable.INCARNATION_KEY)
        previous = 0 if stored is None else decode_int(Family.META, stored, durable.INCARNATION_KEY)
        self.core.incarnation = previous + 1
        if self.options.bug_incarnation_not_raised:
            self.core.incarnation = max(previous, 1)
        self._write([(Family.META, durable.INCARNATION_KEY, encode_value(self.incarnation))])
        self.log_stream.load_log_state()
        self.catch_up.load_walks()
        self.core.started = True
        return self._take_effects()

    def submit(self, request_id: int, request: Request) -> Effects:
        assert self.started
        deadline = self.now + self.options.client_timeout_ticks
        match request:
            case Write():
                self.proposer.submit_write(request_id, request, deadline)
            case Get() | Sync() | TableGet() | TableRows():
                if self.options.bug_read_without_quorum:
                    self.reads.answer_read(ClientRead(request_id, request))
                else:
                    self.reads.start_read(request.key, ClientRead(request_id, request), deadline)
            case _:
                self._reply(request_id, Unavailable(f"{type(request).__name__} is not served here"))
        if self.options.stream_pump_each_step:
            self.log_stream.pump_streams()
        return self._take_effects()

    def step(self, source: int, message: Message) -> Effects:
        """Act on `message` from `source`; PeerInputError (and no change) if it
        is not a message this replica may act on."""
        assert self.started and source in self.members
        if source != self.node_id:
            check_message(message, source, self.members, self.limits)
            self._check_against_state(message)
        match message:
            case Prepare():
                self.acceptor.on_prepare(source, message)
            case Promise():
                self.proposer.on_promise(source, message)
            case Accept():
                self.acceptor.on_accept(source, message)
            case Accepted():
                self.proposer.on_accepted(source, message)
            case Commit():
                self.acceptor.learn_decision(message.key, message.instance)
            case Read():
                self.reads.on_read(source, message)
            case ReadReply():
                self.reads.on_read_reply(source, message)
            case FetchPayload():
                self.catch_up.on_fetch_payload(source, message)
            case PayloadReply():
                self.catch_up.on_payload_reply(source, message)
            case FetchState():
                self.catch_up.on_fetch_state(source, message)
            case StateReply():
                self.catch_up.on_state_reply(source, message)
            case FetchDecisions():
                self.catch_up.on_fetch_decisions(source, message)
            case DecisionsReply():
                self.catch_up.on_decisions_reply(source, message)
            case StreamRecords():
                self.log_stream.on_stream_records(source, message)
            case StreamAck():
                self.log_stream.on_stream_ack(source, message)
            case StreamTrimmed():
                self.log_stream.on_stream_trimmed(source, message)
            case _:
                raise AssertionError(f"unknown message {message!r}")
        if self.options.stream_pump_each_step:
            self.log_stream.pump_streams()
        return self._take_effects()

    # -- peer input against what this replica knows -----------------------------

    def _check_against_state(self, message: Message) -> None:
        """What would trip an assertion of the core had an honest peer sent it
        (peer_input.py): a decision contradicting a known one or another in
        the same message (invariant 1), a second ref for an accepted (key,
        ballot, version) (R8), a decided instance whose count disagrees with
        its payload."""
        decisions: list[tuple[bytes, Instance]] = []
        arriving: dict = {}  # ref -> payload, for payloads this message brings
        match message:
            case Commit(key=key, instance=instance):
                decisions.append((key, instance))
            case Accept(key=key, ballot=ballot, instance=instance, previous=previous):
                if previous is not None:
                    decisions.append((key, previous))
                accepted = self._consensus_of(key).accepted
                if (
                    accepted is not None
                    and (accepted.ballot, accepted.instance.first_version)
                    == (ballot, instance.first_version)
                    and accepted.instance != instance
                ):
                    raise PeerInputError(f"Accept: R8: a second ref for {key!r} at {ballot}")
                self._check_count(key, instance)
            case Promise(key=key, chosen=chosen) | ReadReply(key=key, chosen=chosen) | StateReply(
                key=key, chosen=chosen
            ):
                if chosen is not None:
                    decisions.append((key, chosen))
                if isinstance(message, Promise) and message.accepted_payload is not None:
                    self._check_payload(key, message.accepted.instance.ref, message.accepted_payload)
            case Accepted(key=key):
                decisions.extend(
                    (key, instance)
                    for instance in (message.decided, message.chosen)
                    if instance is not None
                )
            case DecisionsReply():
                decisions.extend(message.decisions)
            case StreamRecords(records=records):
                for _position, record in records:
                    if isinstance(record, DecisionRecord):
                        decisions.append((record.key, record.instance))
                    elif isinstance(record, PayloadRecord):
                        self._check_payload(record.key, record.ref, record.payload)
                        arriving[record.ref] = record.payload
            case PayloadReply(ref=ref, key=key, payload=payload) if payload is not None:
                self._check_payload(key, ref, payload)
        claimed: dict[tuple[bytes, int], Instance] = {}
        for key, instance in decisions:
            known = claimed.setdefault((key, instance.first_version), instance)
            if known == instance:
                known = self._consensus_of(key).decided_at(instance.first_version)
                if known == instance:
                    continue  # learned before, and checked then
            if known is not None and known != instance:
                raise PeerInputError(
                    f"a decision for {key!r} v{instance.first_version} contradicts {known}: "
                    f"{instance}"
                )
            self._check_count(key, instance, arriving.get(instance.ref))

    def _check_count(self, key: bytes, instance: Instance, payload: bytes | None = None) -> None:
        payload = payload or self.payloads.payload(instance.ref)
        if payload is not None and held_payload_count(payload) != instance.count:
            raise PeerInputError(f"{instance} of {key!r} disagrees with its payload's size")

    def _check_payload(self, key: bytes, ref, payload: bytes) -> None:
        """A payload arriving for a ref this replica holds a decision or vote on."""
        consensus = self._consensus_of(key)
        named = list(consensus.pending.values())
        if consensus.accepted is not None:
            named.append(consensus.accepted.instance)
        count = held_payload_count(payload)
        for instance in named:
            if instance.ref == ref and instance.count != count:
                raise PeerInputError(f"the payload of {ref} disagrees with {instance} of {key!r}")

    def pump_streams(self) -> Effects:
        """Send each peer the log records it has not been sent (see
        `ReplicaOptions.stream_pump_each_step`)."""
        assert self.started
        self.log_stream.pump_streams()
        return self._take_effects()

    def tick(self) -> Effects:
        assert self.started
        self.core.now += 1
        self.proposer.on_tick()
        self.reads.on_tick()
        # Sorted: set order depends on the hash seed, and a run must replay from its seed.
        for key in sorted(self.acceptor.catching_up | self.reads.keys_waiting_apply()):
            self.acceptor.advance(key)
        self.catch_up.on_tick()
        self.log_stream.on_tick()
        self.log_stream.trim_log()
        self.payloads.collect()
        self.log_stream.pump_streams()
        return self._take_effects()


__all__ = ["PeerInputError", "Replica", "ReplicaOptions", "ZERO_BALLOT"]
