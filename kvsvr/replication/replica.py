"""The replica: per-key Paxos on versions, sans-IO.

Theory of operation. A replica is a plain object driven by four calls,
each returning `Effects` (messages.py says in which order the shell must
carry them out): `start()` once, `submit()` for a client request, `step()`
for a message from a peer (or from itself: a replica votes through the
same path as everyone else), and `tick()` for the passing of time. It
never awaits, reads a clock or draws an unseeded random number; it writes
to its storage unsynced and asks the shell to sync before anything leaves.

Every node plays three parts for every key of its group:

- *Acceptor* (on_prepare, on_accept): grants a Prepare iff its ballot is
  >= the promise; accepts instance v iff the ballot is >= the promise, v is
  the one after the decided instance it carries (prev_decision), and the
  payload is stored with a matching checksum. A missing payload parks the
  Accept, re-checked in full when the payload lands (R4). An Accept for a
  (ballot, version) already accepted with another ref is a broken
  invariant (R8).
- *Learner* (learn_decision, advance): records decided instances from
  Commit, the stream's Decision records, Accept's prev_decision, reads and
  prepares, then applies them in version order once their payloads are
  here. A gap it cannot fill from payloads is closed by state transfer,
  which only ever moves the applied version up (R12).
- *Proposer* (per key, in memory only, R2): a client write is queued at
  the coordinator; without a promise it runs Prepare (ballot above any
  round seen, R1 identities), re-proposes the highest accepted value above
  the decided one unchanged (recovery), and then keeps the promise, so the
  next instance needs one round trip (the fast path). Writes that arrive
  while an instance is in flight wait and go together into the next one.
  A majority of matching Accepted replies (R5) is a decision: the
  coordinator logs it, applies it, answers and sends Commit. Once an
  Accept has left, only a learned decision settles its writes (R9); if the
  deadline passes first the client hears `timeout` (outcome unknown).
  A write whose condition fails is answered only after a quorum read
  confirmed the state it was checked against is still the newest (R7).

Linearizable reads ask a majority for their decided and accepted state,
settle any instance above the decided one (a majority holding the same
vote is decided; otherwise wait, then run recovery), and answer from the
local state once it has applied at least that version (R10).

The replication log: every payload and decision this node originates is
appended to its own log and streamed to each peer from the peer's
acknowledged position, in batches, with a bounded window. A receiver
stores records idempotently with its cursor in the same write and acks
only what is synced (the ack is a message, so it leaves after the sync).
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Callable
from typing import Any

import cbor2
import crc32c

from kvsvr import keyspace, model, records
from kvsvr.errors import ConditionFailed, KvError, Timeout, Unavailable
from kvsvr.limits import DEFAULT_LIMITS, Limits
from kvsvr.replication import durable
from kvsvr.replication.messages import (
    LOG_START,
    ZERO_BALLOT,
    Accept,
    Accepted,
    Ballot,
    Commit,
    DecisionRecord,
    Effects,
    FetchPayload,
    FetchState,
    Instance,
    LogPosition,
    LogRecord,
    Message,
    PayloadRecord,
    PayloadReply,
    Prepare,
    Promise,
    Read,
    ReadReply,
    Ref,
    StateReply,
    StreamAck,
    StreamRecords,
    Vote,
)
from kvsvr.requests import Get, Request, Sync, TableGet, TableRows, Write


@dataclasses.dataclass(frozen=True)
class ReplicaOptions:
    """Timeouts in ticks, and bounds. The shell decides how long a tick is."""

    # Resend a round's message to members that have not answered after this long.
    round_timeout_ticks: int = 8
    # Resends of one Prepare or Accept round before it is given up.
    round_attempts_max: int = 4
    # After a lost round: wait a random 1..base * 2**failures ticks, capped (R6).
    backoff_base_ticks: int = 2
    backoff_max_ticks: int = 64
    # A client request unanswered this long is answered `timeout` (unknown outcome).
    client_timeout_ticks: int = 400
    # Quorum reads retried while an instance above the decided one is open,
    # before the reader runs a recovery round itself.
    read_retries_before_recovery: int = 3
    # Log records streamed to a peer beyond its ack, and per message.
    stream_window_records: int = 512
    stream_batch_records_max: int = 64
    # A receiver re-acks each origin this often (how a restarted origin learns
    # where to resume); an origin resends from the ack if nothing moved this long.
    stream_ack_interval_ticks: int = 16
    stream_retransmit_ticks: int = 24
    # Fetches of a missing payload or state are retried this often.
    fetch_retry_ticks: int = 12
    # Mutations merged into one instance, and the payload bytes they may total.
    batch_mutations_max: int = 128
    batch_payload_max_bytes: int = 1024 * 1024
    # Planted bugs: each switches off one safety rule, for the tests that show
    # the simulator finds the violation. Never set outside those tests.
    bug_skip_promise_check: bool = False
    bug_reply_before_sync: bool = False
    bug_read_without_quorum: bool = False


@dataclasses.dataclass
class _ClientWrite:
    request_id: int
    request: Write
    deadline: int
    result: dict | None = None  # set when it joins a batch


@dataclasses.dataclass
class _Proposer:
    """One key's proposer state. Memory only: lost on restart (R2)."""

    ballot: Ballot | None = None  # a promise a majority granted us
    round_seen: int = 0
    phase: str = "idle"  # idle | preparing | accepting
    prepare_ballot: Ballot | None = None
    promises: dict[int, Promise] = dataclasses.field(default_factory=dict)
    accept: Accept | None = None  # in flight; frozen once sent (R8)
    votes: set[int] = dataclasses.field(default_factory=set)
    round_deadline: int = 0
    attempts: int = 0
    backoff_until: int = 0
    lost_rounds: int = 0
    queue: collections.deque = dataclasses.field(default_factory=collections.deque)
    recovery_wanted: bool = False
    # Writes whose Accept left, by the first version they were proposed at:
    # one (ref, writes) per proposal. A coordinator may propose twice at one
    # version (its first Accept reached no quorum, a new Prepare found no
    # vote); each batch waits for the decision at that version (R9).
    proposed: dict[int, list[tuple[Ref, list[_ClientWrite]]]] = dataclasses.field(
        default_factory=dict
    )


@dataclasses.dataclass
class _PendingRead:
    key: bytes
    read_id: int
    # ("client", request_id, request) or ("confirm", _ClientWrite, version_checked)
    purpose: tuple
    deadline: int
    replies: dict[int, ReadReply] = dataclasses.field(default_factory=dict)
    retry_at: int = 0
    retries: int = 0
    target_version: int | None = None  # set once a quorum settled it


@dataclasses.dataclass
class _StreamOut:
    acked: LogPosition | None = None  # unknown until the peer acks
    sent: LogPosition = LOG_START
    last_progress_tick: int = 0


class Replica:
    def __init__(
        self,
        node_id: int,
        members: tuple[int, ...],
        storage,
        rng: random.Random,
        options: ReplicaOptions = ReplicaOptions(),
        limits: Limits = DEFAULT_LIMITS,
        observer: Callable[[str, Any], None] | None = None,
    ):
        assert node_id in members and len(set(members)) == len(members)
        self.node_id = node_id
        self.members = tuple(sorted(members))
        self.peers = tuple(member for member in self.members if member != node_id)
        self.majority = len(self.members) // 2 + 1
        self.storage = storage
        self.keyspace = keyspace.Keyspace(storage)
        self.rng = rng
        self.options = options
        self.limits = limits
        # The simulator's window into the replica: observer(event, details).
        self.observer = observer or _ignore
        self.now = 0
        self.incarnation = 0
        self._effects = Effects()
        self._consensus: dict[bytes, durable.KeyConsensus] = {}
        self._proposers: dict[bytes, _Proposer] = {}
        self._parked: dict[Ref, list[tuple[int, Accept]]] = collections.defaultdict(list)
        self._reads: dict[int, _PendingRead] = {}
        self._reads_waiting_apply: dict[bytes, list[_PendingRead]] = collections.defaultdict(list)
        self._next_read_id = 1
        self._log_next_seq = 1
        self._log_last: LogPosition = LOG_START
        self._streams = {peer: _StreamOut() for peer in self.peers}
        self._cursors: dict[int, LogPosition] = {}
        self._last_ack_tick: dict[int, int] = {}
        self._fetch_retry_at: dict[tuple, int] = {}
        self._catching_up: set[bytes] = set()  # keys decided beyond what is applied
        self.started = False

    # -- the four entry points -------------------------------------------------

    def start(self) -> Effects:
        """Raise and sync the incarnation before anything is sent (R1)."""
        assert not self.started
        stored = self.storage.get("meta", durable.INCARNATION_KEY)
        previous = 0 if stored is None else _decode_int(stored, durable.INCARNATION_KEY)
        self.incarnation = previous + 1
        self._write([("meta", durable.INCARNATION_KEY, _encode_int(self.incarnation))])
        last = self.storage.scan("log", b"", None, 1 << 62)  # the log tail, for streaming
        if last:
            self._log_last = durable.position_from_key(last[-1][0])
        for origin_stored_key, stored_cursor in self.storage.scan("cursors", b"", None, 1 << 16):
            origin = int.from_bytes(origin_stored_key, "big")
            self._cursors[origin] = tuple(_decode_value(stored_cursor, origin_stored_key))
        self.started = True
        return self._take_effects()

    def submit(self, request_id: int, request: Request) -> Effects:
        assert self.started
        deadline = self.now + self.options.client_timeout_ticks
        match request:
            case Write():
                proposer = self._proposer(request.key)
                proposer.queue.append(_ClientWrite(request_id, request, deadline))
                self._drive(request.key)
            case Get() | Sync() | TableGet() | TableRows():
                if self.options.bug_read_without_quorum:
                    self._answer_read(("client", request_id, request))
                else:
                    self._start_read(request.key, ("client", request_id, request), deadline)
            case _:
                self._reply(request_id, Unavailable(f"{type(request).__name__} is not served here"))
        self._pump_streams()
        return self._take_effects()

    def step(self, source: int, message: Message) -> Effects:
        assert self.started and source in self.members
        match message:
            case Prepare():
                self.on_prepare(source, message)
            case Promise():
                self.on_promise(source, message)
            case Accept():
                self.on_accept(source, message)
            case Accepted():
                self.on_accepted(source, message)
            case Commit():
                self.learn_decision(message.key, message.instance)
            case Read():
                self.on_read(source, message)
            case ReadReply():
                self.on_read_reply(source, message)
            case FetchPayload():
                self.on_fetch_payload(source, message)
            case PayloadReply():
                self.on_payload_reply(source, message)
            case FetchState():
                self.on_fetch_state(source, message)
            case StateReply():
                self.on_state_reply(source, message)
            case StreamRecords():
                self.on_stream_records(source, message)
            case StreamAck():
                self.on_stream_ack(source, message)
            case _:
                raise AssertionError(f"unknown message {message!r}")
        self._pump_streams()
        return self._take_effects()

    def tick(self) -> Effects:
        assert self.started
        self.now += 1
        for key in list(self._proposers):
            self._on_proposer_tick(key)
        for read in list(self._reads.values()):
            self._on_read_tick(read)
        for key in list(self._catching_up | set(self._reads_waiting_apply)):
            self._advance(key)
        self._on_stream_tick()
        self._pump_streams()
        return self._take_effects()

    # -- effects ---------------------------------------------------------------

    def _take_effects(self) -> Effects:
        effects, self._effects = self._effects, Effects()
        if self.options.bug_reply_before_sync:
            effects.sync = False  # planted bug: messages may leave before the sync
        return effects

    def _write(self, writes) -> None:
        if writes:
            self.storage.write(writes, sync=False)
            self._effects.sync = True

    def _send(self, destination: int, message: Message) -> None:
        self._effects.messages.append((destination, message))

    def _broadcast(self, message: Message) -> None:
        for member in self.members:
            self._send(member, message)

    def _reply(self, request_id: int, answer: Any) -> None:
        self._effects.replies.append((request_id, answer))

    # -- durable per-key consensus state ----------------------------------------

    def _consensus_of(self, key: bytes) -> durable.KeyConsensus:
        found = self._consensus.get(key)
        if found is None:
            stored = self.storage.get("acceptor", key)
            found = (
                durable.KeyConsensus()
                if stored is None
                else durable.KeyConsensus.from_record(stored, key)
            )
            self._consensus[key] = found
        return found

    def _save(self, key: bytes) -> None:
        self._write([("acceptor", key, self._consensus[key].to_record())])

    def _applied_version(self, key: bytes) -> int:
        return self.keyspace.key_state(key).version

    # -- acceptor ----------------------------------------------------------------

    def on_prepare(self, source: int, message: Prepare) -> None:
        key = message.key
        consensus = self._consensus_of(key)
        granted = message.ballot >= consensus.promised
        if granted and message.ballot > consensus.promised:
            consensus.promised = message.ballot
            self._save(key)
        accepted = consensus.accepted
        payload = None if accepted is None else self._payload(accepted.instance.ref)
        self._send(
            source,
            Promise(
                key,
                message.ballot,
                granted,
                consensus.promised,
                consensus.chosen,
                accepted,
                payload,
            ),
        )

    def on_accept(self, source: int, message: Accept) -> None:
        key, ballot, instance = message.key, message.ballot, message.instance
        if message.previous is not None:
            self.learn_decision(key, message.previous)
        consensus = self._consensus_of(key)

        def answer(outcome: str, decided: Instance | None = None) -> None:
            self._send(
                source,
                Accepted(
                    key, ballot, instance, outcome, consensus.promised, consensus.chosen, decided
                ),
            )

        if consensus.chosen_version >= instance.first_version:
            # already_chosen(v, ref): name what won v, not only the newest decision (R9).
            answer("already_chosen", consensus.decided_at(instance.first_version))
            return
        if ballot < consensus.promised and not self.options.bug_skip_promise_check:
            answer("rejected")
            return
        assert instance.first_version == consensus.chosen_version + 1, (
            f"Accept for {key!r} v{instance.first_version} does not follow the decided "
            f"v{consensus.chosen_version} it carries"
        )
        accepted = consensus.accepted
        if (
            accepted is not None
            and accepted.ballot == ballot
            and accepted.instance.first_version == instance.first_version
        ):
            assert accepted.instance == instance, (
                f"R8: ({key!r}, {ballot}, v{instance.first_version}) offered "
                f"{instance.ref} after {accepted.instance.ref}"
            )
        if self._payload(instance.ref) is None:
            # R4: park; every check above runs again when the payload lands.
            self._parked[instance.ref].append((source, message))
            self._fetch_payload(instance.ref, source)
            return
        if ballot > consensus.promised:
            consensus.promised = ballot
        consensus.accepted = Vote(ballot, instance)
        self._save(key)
        self.observer("accepted", (self.node_id, key, ballot, instance))
        answer("accepted")

    # -- learner -----------------------------------------------------------------

    def learn_decision(self, key: bytes, instance: Instance) -> None:
        """Record that `instance` of `key` is decided, and apply what can be."""
        consensus = self._consensus_of(key)
        self.observer("decided", (self.node_id, key, instance))
        known = consensus.decided_at(instance.first_version)
        if known is not None:
            assert known == instance, (
                f"two decisions for {key!r} v{instance.first_version}: {known} and {instance}"
            )
            self._settle_proposed(key, instance)
            return
        applied = self._applied_version(key)
        changed = False
        if instance.first_version > applied:
            consensus.pending[instance.first_version] = instance
            changed = True
        if instance.last_version > consensus.chosen_version:
            consensus.chosen = instance
            changed = True
        _remember(consensus, instance)
        if changed:
            self._save(key)
        self._settle_proposed(key, instance)
        self._advance(key)

    def _advance(self, key: bytes) -> None:
        """Apply decided instances in version order; fetch what is missing."""
        consensus = self._consensus_of(key)
        state = self.keyspace.key_state(key)
        progressed = False
        while True:
            for first_version in [v for v in consensus.pending if v <= state.version]:
                del consensus.pending[first_version]
                progressed = True
            instance = consensus.pending.get(state.version + 1)
            if instance is None:
                break
            payload = self._payload(instance.ref)
            if payload is None:
                self._fetch_payload(instance.ref, instance.ref[0])
                break
            mutations = _decode_mutations(payload)
            assert len(mutations) == instance.count, f"payload {instance.ref} size mismatch"
            writes = []
            for mutation in mutations:
                applied = model.apply(state, mutation)
                writes.extend(keyspace.applied_writes(key, applied))
                state = applied.state
            del consensus.pending[instance.first_version]
            self._write(writes)
            if self.observer is not _ignore:
                self.observer("applied", (self.node_id, key, state.version, _state_digest(self, key)))
            progressed = True
        if progressed:
            self._save(key)
        if consensus.chosen_version > state.version:
            self._catching_up.add(key)
            if consensus.pending.get(state.version + 1) is None:
                self._fetch_state(key, consensus.chosen_version)
        else:
            self._catching_up.discard(key)
        if self._reads_waiting_apply.get(key):
            self._finish_reads_applied(key, state.version)
        if progressed:
            self._drive(key)

    def _finish_reads_applied(self, key: bytes, applied_version: int) -> None:
        waiting = self._reads_waiting_apply.pop(key)
        still = [read for read in waiting if read.target_version > applied_version]
        if still:
            self._reads_waiting_apply[key] = still
        for read in waiting:
            if read.target_version <= applied_version:
                self._finish_read(read)

    # -- payloads and state transfer ---------------------------------------------

    def _payload(self, ref: Ref) -> bytes | None:
        stored = self.storage.get("payloads", durable.ref_key(ref))
        if stored is None:
            return None
        key, payload = _decode_value(stored, durable.ref_key(ref))
        return payload

    def _store_payload(self, ref: Ref, key: bytes, payload: bytes) -> bool:
        """Store a payload received from a peer; False (and nothing stored) if corrupt."""
        if crc32c.crc32c(payload) != ref[3]:
            self.observer("corrupt_payload", (self.node_id, ref))
            return False
        self.observer("payload", (ref, payload))
        if self._payload(ref) is None:
            self._write(
                [("payloads", durable.ref_key(ref), _encode_value([key, payload]))]
            )
        return True

    def _on_payload_stored(self, ref: Ref, key: bytes) -> None:
        for source, accept in self._parked.pop(ref, ()):
            self.on_accept(source, accept)
        self._fetch_retry_at.pop(("payload", ref), None)
        self._advance(key)

    def _fetch_payload(self, ref: Ref, preferred: int) -> None:
        if not self._due(("payload", ref)):
            return
        targets = [preferred] if preferred in self.peers else []
        targets += [peer for peer in self.peers if peer != preferred]
        # The origin first; after a miss, anyone (it may have crashed).
        attempt = self._fetch_attempts(("payload", ref))
        self._send(targets[attempt % len(targets)], FetchPayload(ref))

    def _fetch_state(self, key: bytes, version_min: int) -> None:
        if not self._due(("state", key)):
            return
        attempt = self._fetch_attempts(("state", key))
        self._send(self.peers[attempt % len(self.peers)], FetchState(key, version_min))

    def _due(self, what: tuple) -> bool:
        retry_at = self._fetch_retry_at.get(what)
        if retry_at is not None and retry_at > self.now:
            return False
        self._fetch_retry_at[what] = self.now + self.options.fetch_retry_ticks
        return True

    def _fetch_attempts(self, what: tuple) -> int:
        count_key = ("attempts", what)
        attempts = self._fetch_retry_at.get(count_key, 0)
        self._fetch_retry_at[count_key] = attempts + 1
        return attempts

    def on_fetch_payload(self, source: int, message: FetchPayload) -> None:
        stored = self.storage.get("payloads", durable.ref_key(message.ref))
        if stored is None:
            self._send(source, PayloadReply(message.ref, b"", None))
            return
        key, payload = _decode_value(stored, durable.ref_key(message.ref))
        self._send(source, PayloadReply(message.ref, key, payload))

    def on_payload_reply(self, source: int, message: PayloadReply) -> None:
        if message.payload is None:
            self._fetch_retry_at.pop(("payload", message.ref), None)  # ask the next one
            return
        if self._store_payload(message.ref, message.key, message.payload):
            self._on_payload_stored(message.ref, message.key)

    def on_fetch_state(self, source: int, message: FetchState) -> None:
        key = message.key
        state = self.keyspace.key_state(key)
        if state.version < message.version_min:
            self._send(source, StateReply(key, message.version_min, None, None, None))
            return
        rows = None
        if state.kind == model.KIND_TABLE:
            rows = [
                [row_id, row.version, row.value] for row_id, row in self.keyspace.all_rows(key)
            ]
        self._send(
            source,
            StateReply(
                key,
                message.version_min,
                [state.version, state.kind, state.value],
                rows,
                self._consensus_of(key).chosen,
            ),
        )

    def on_state_reply(self, source: int, message: StateReply) -> None:
        key = message.key
        if message.state is None:
            self._fetch_retry_at.pop(("state", key), None)  # ask the next peer
            return
        version, kind, value = message.state
        local = self.keyspace.key_state(key)
        if version <= local.version:
            return  # R12: state transfer only moves the applied version up
        installed = model.KeyState(version, kind, value)
        writes = [("keys", key, installed.to_record())]
        if message.rows is not None:
            writes.extend(keyspace.table_writes(key, message.rows))
        self._write(writes)
        if self.observer is not _ignore:
            self.observer("applied", (self.node_id, key, version, _state_digest(self, key)))
        consensus = self._consensus_of(key)
        if message.chosen is not None:
            self.learn_decision(key, message.chosen)
        for first_version in [v for v in consensus.pending if v <= version]:
            del consensus.pending[first_version]
        self._save(key)
        self._fetch_retry_at.pop(("state", key), None)
        self._advance(key)

    # -- proposer ----------------------------------------------------------------

    def _proposer(self, key: bytes) -> _Proposer:
        proposer = self._proposers.get(key)
        if proposer is None:
            proposer = self._proposers[key] = _Proposer()
        return proposer

    def _drive(self, key: bytes) -> None:
        """Move key's proposer forward as far as it can go now."""
        proposer = self._proposers.get(key)
        if proposer is None or proposer.phase != "idle":
            return
        if not proposer.queue and not proposer.recovery_wanted:
            return
        if proposer.backoff_until > self.now:
            return
        if proposer.ballot is None or proposer.recovery_wanted:
            self._start_prepare(key, proposer)
            return
        consensus = self._consensus_of(key)
        if self._applied_version(key) < consensus.chosen_version:
            self._advance(key)  # catching up; drives again once it progresses
            return
        self._start_instance(key, proposer, consensus)

    def _start_prepare(self, key: bytes, proposer: _Proposer) -> None:
        consensus = self._consensus_of(key)
        round_number = max(proposer.round_seen, consensus.promised[0]) + 1
        proposer.round_seen = round_number
        proposer.prepare_ballot = (round_number, self.incarnation, self.node_id)
        proposer.ballot = None
        proposer.recovery_wanted = False
        proposer.promises = {}
        proposer.phase = "preparing"
        proposer.attempts = 0
        proposer.round_deadline = self.now + self.options.round_timeout_ticks
        self._broadcast(Prepare(key, proposer.prepare_ballot))

    def on_promise(self, source: int, message: Promise) -> None:
        key = message.key
        proposer = self._proposers.get(key)
        if proposer is None:
            return
        proposer.round_seen = max(proposer.round_seen, message.promised[0])
        if proposer.phase != "preparing" or message.ballot != proposer.prepare_ballot:
            return  # a reply to an older round (R5)
        if message.chosen is not None:
            self.learn_decision(key, message.chosen)
        if message.accepted is not None and message.accepted_payload is not None:
            ref = message.accepted.instance.ref
            if self._store_payload(ref, key, message.accepted_payload):
                self._on_payload_stored(ref, key)
        if not message.granted:
            self._lose_round(proposer)
            self._drive(key)
            return
        proposer.promises[source] = message
        if len(proposer.promises) < self.majority:
            return
        # A majority promised: the highest accepted value above the decided
        # one must be proposed again, unchanged, before anything new.
        proposer.ballot = proposer.prepare_ballot
        proposer.phase = "idle"
        proposer.lost_rounds = 0
        consensus = self._consensus_of(key)
        decided = consensus.chosen_version
        votes = [
            promise.accepted
            for promise in proposer.promises.values()
            if promise.accepted is not None
            and promise.accepted.instance.first_version == decided + 1
        ]
        if votes:
            recovered = max(votes, key=lambda vote: vote.ballot).instance
            self._send_accept(key, proposer, recovered, consensus.chosen)
            return
        self._drive(key)

    def _start_instance(
        self, key: bytes, proposer: _Proposer, consensus: durable.KeyConsensus
    ) -> None:
        """Batch the queued writes that pass their checks into one instance."""
        state = self.keyspace.key_state(key)
        assert state.version == consensus.chosen_version
        batch: list[_ClientWrite] = []
        mutations = []
        payload_bytes = 0
        while proposer.queue and len(batch) < self.options.batch_mutations_max:
            write = proposer.queue[0]
            if write.deadline <= self.now:
                proposer.queue.popleft()
                self._reply(write.request_id, Timeout("not proposed before the deadline"))
                continue
            request = write.request
            try:
                model.check(key, state, request.mutation, request.condition)
            except KvError as error:
                if batch:
                    break  # checked against a state this batch made: next instance
                proposer.queue.popleft()
                if isinstance(error, ConditionFailed):
                    # R7: answered only once a quorum confirms this is the newest state.
                    self._start_read(key, ("confirm", write, state.version), write.deadline)
                else:
                    self._reply(write.request_id, error)
                continue
            wire = model.mutation_to_wire(request.mutation)
            size = len(cbor2.dumps(wire))
            if batch and payload_bytes + size > self.options.batch_payload_max_bytes:
                break
            proposer.queue.popleft()
            applied = model.apply(state, request.mutation)
            write.result = {"version": applied.state.version}
            if isinstance(request.mutation, model.Delete):
                write.result["existed"] = applied.existed
            state = applied.state
            batch.append(write)
            mutations.append(wire)
            payload_bytes += size
        if not batch:
            return
        payload = cbor2.dumps(mutations)
        position = self._next_log_position()
        ref: Ref = (self.node_id, self.incarnation, position[1], crc32c.crc32c(payload))
        self.observer("payload", (ref, payload))
        self._append_log(position, PayloadRecord(ref, key, payload))
        self._write([("payloads", durable.ref_key(ref), _encode_value([key, payload]))])
        instance = Instance(consensus.chosen_version + 1, len(batch), ref)
        proposer.proposed.setdefault(instance.first_version, []).append((ref, batch))
        self._send_accept(key, proposer, instance, consensus.chosen)

    def _send_accept(
        self, key: bytes, proposer: _Proposer, instance: Instance, previous: Instance | None
    ) -> None:
        proposer.accept = Accept(key, proposer.ballot, instance, previous)
        proposer.votes = set()
        proposer.phase = "accepting"
        proposer.attempts = 0
        proposer.round_deadline = self.now + self.options.round_timeout_ticks
        self.observer("accept_sent", (self.node_id, proposer.accept))
        self._broadcast(proposer.accept)

    def on_accepted(self, source: int, message: Accepted) -> None:
        key = message.key
        proposer = self._proposers.get(key)
        if proposer is not None:
            proposer.round_seen = max(proposer.round_seen, message.promised[0])
        if message.outcome == "already_chosen":
            if message.decided is not None:
                self.learn_decision(key, message.decided)
            if message.chosen is not None:
                self.learn_decision(key, message.chosen)
        if (
            proposer is None
            or proposer.phase != "accepting"
            or message.ballot != proposer.accept.ballot
            or message.instance != proposer.accept.instance
        ):
            return  # stale or about another value (R5)
        if message.outcome == "accepted":
            proposer.votes.add(source)
            if len(proposer.votes) >= self.majority:
                self._on_chosen(key, proposer)
            return
        # Rejected, or the version is already decided: our view is old. The
        # writes in flight stay attached to their ref until a decision settles
        # them (R9); a new Prepare will recover or supersede the value.
        proposer.phase = "idle"
        proposer.ballot = None
        if message.outcome == "rejected":
            self._lose_round(proposer)
        self._drive(key)

    def _on_chosen(self, key: bytes, proposer: _Proposer) -> None:
        instance = proposer.accept.instance
        proposer.phase = "idle"
        proposer.accept = None
        for peer in self.peers:
            self._send(peer, Commit(key, instance))
        self.learn_decision(key, instance)
        # Logged after the acceptor record that holds it as chosen: a crash keeps
        # a prefix of the writes, so whenever the Decision record survives, so
        # does `chosen`, and a peer handed to state transfer finds every logged
        # decision by walking our keys (R11).
        self._append_log(self._next_log_position(), DecisionRecord(key, instance))
        self._drive(key)

    def _settle_proposed(self, key: bytes, decided: Instance) -> None:
        """Answer or requeue the writes proposed at versions `decided` covers (R9)."""
        proposer = self._proposers.get(key)
        if proposer is None or not proposer.proposed:
            return
        for first_version in range(decided.first_version, decided.last_version + 1):
            for ref, writes in proposer.proposed.pop(first_version, ()):
                if first_version == decided.first_version and ref == decided.ref:
                    for write in writes:
                        self._reply(write.request_id, write.result)
                else:
                    # Another value was decided at this version: ours may go again.
                    for write in reversed(writes):
                        write.result = None
                        proposer.queue.appendleft(write)

    def _lose_round(self, proposer: _Proposer) -> None:
        """R6: back off a random, exponentially growing number of ticks."""
        proposer.phase = "idle"
        proposer.ballot = None
        proposer.lost_rounds += 1
        ceiling = min(
            self.options.backoff_max_ticks,
            self.options.backoff_base_ticks * 2 ** min(proposer.lost_rounds, 16),
        )
        proposer.backoff_until = self.now + self.rng.randint(1, ceiling)

    def _on_proposer_tick(self, key: bytes) -> None:
        proposer = self._proposers[key]
        for write in [w for w in proposer.queue if w.deadline <= self.now]:
            proposer.queue.remove(write)
            self._reply(write.request_id, Timeout("no decision before the deadline"))
        self._expire_proposed(proposer)
        if proposer.phase in ("preparing", "accepting") and proposer.round_deadline <= self.now:
            proposer.attempts += 1
            if proposer.attempts > self.options.round_attempts_max:
                self._lose_round(proposer)
            else:
                proposer.round_deadline = self.now + self.options.round_timeout_ticks
                if proposer.phase == "preparing":
                    message = Prepare(key, proposer.prepare_ballot)
                    answered = set(proposer.promises)
                else:
                    message = proposer.accept  # identical resend (R8)
                    answered = proposer.votes
                for member in self.members:
                    if member not in answered:
                        self._send(member, message)
        self._drive(key)
        if (
            proposer.phase == "idle"
            and not proposer.queue
            and proposer.ballot is None
            and not proposer.proposed
        ):
            del self._proposers[key]

    def _expire_proposed(self, proposer: _Proposer) -> None:
        for first_version, proposals in list(proposer.proposed.items()):
            for _ref, writes in proposals:
                for write in [write for write in writes if write.deadline <= self.now]:
                    # R9: an Accept left; without a decision the outcome is unknown.
                    self._reply(write.request_id, Timeout("outcome unknown: no decision learned"))
                    writes.remove(write)
            proposals[:] = [proposal for proposal in proposals if proposal[1]]
            if not proposals:
                del proposer.proposed[first_version]

    # -- reads -------------------------------------------------------------------

    def _start_read(self, key: bytes, purpose: tuple, deadline: int) -> None:
        read = _PendingRead(key, self._next_read_id, purpose, deadline)
        self._next_read_id += 1
        self._reads[read.read_id] = read
        self._broadcast(Read(key, read.read_id))
        read.retry_at = self.now + self.options.round_timeout_ticks

    def on_read(self, source: int, message: Read) -> None:
        consensus = self._consensus_of(message.key)
        self._send(
            source,
            ReadReply(
                message.key,
                message.read_id,
                consensus.chosen,
                consensus.accepted,
                self._applied_version(message.key),
            ),
        )

    def on_read_reply(self, source: int, message: ReadReply) -> None:
        read = self._reads.get(message.read_id)
        if read is None or read.target_version is not None or read.key != message.key:
            return
        read.replies[source] = message
        if message.chosen is not None:
            self.learn_decision(message.key, message.chosen)
        if len(read.replies) < self.majority:
            return
        decided = max(
            (reply.chosen for reply in read.replies.values() if reply.chosen is not None),
            key=lambda instance: instance.last_version,
            default=None,
        )
        decided_version = 0 if decided is None else decided.last_version
        above = [
            reply.accepted
            for reply in read.replies.values()
            if reply.accepted is not None
            and reply.accepted.instance.first_version == decided_version + 1
        ]
        if above:
            same = collections.Counter(above).most_common(1)[0]
            if same[1] >= self.majority:
                self.learn_decision(read.key, same[0].instance)
                decided_version = same[0].instance.last_version
            else:
                # An instance may be in flight: ask again shortly, and after a
                # few tries settle it ourselves with a recovery round.
                read.retries += 1
                read.replies = {}
                read.retry_at = self.now + self.options.round_timeout_ticks
                if read.retries > self.options.read_retries_before_recovery:
                    proposer = self._proposer(read.key)
                    proposer.recovery_wanted = True
                    self._drive(read.key)
                return
        read.target_version = decided_version
        if self._applied_version(read.key) >= decided_version:
            self._finish_read(read)
        else:
            self._reads_waiting_apply[read.key].append(read)
            self._advance(read.key)

    def _on_read_tick(self, read: _PendingRead) -> None:
        if read.deadline <= self.now:
            self._reads.pop(read.read_id, None)
            waiting = self._reads_waiting_apply.get(read.key)
            if waiting and read in waiting:
                waiting.remove(read)
            self._fail_read(read, Timeout("read: no quorum answer before the deadline"))
            return
        if read.target_version is None and read.retry_at <= self.now:
            read.retry_at = self.now + self.options.round_timeout_ticks
            for member in self.members:
                if member not in read.replies:
                    self._send(member, Read(read.key, read.read_id))

    def _finish_read(self, read: _PendingRead) -> None:
        self._reads.pop(read.read_id, None)
        if read.purpose[0] == "client":
            self._answer_read(read.purpose)
            return
        _, write, version_checked = read.purpose
        if read.target_version == version_checked and self._applied_version(read.key) == (
            version_checked
        ):
            try:
                state = self.keyspace.key_state(read.key)
                model.check(read.key, state, write.request.mutation, write.request.condition)
            except KvError as error:
                self._reply(write.request_id, error)
                return
        # The state moved on since the check: try the write again.
        self._proposer(read.key).queue.appendleft(write)
        self._drive(read.key)

    def _fail_read(self, read: _PendingRead, error: KvError) -> None:
        if read.purpose[0] == "client":
            self._reply(read.purpose[1], error)
        else:
            self._reply(read.purpose[1].request_id, Timeout("condition not confirmed in time"))

    def _answer_read(self, purpose: tuple) -> None:
        _, request_id, request = purpose
        try:
            if isinstance(request, Get):
                state = model.value_or_not_found(
                    request.key, self.keyspace.key_state(request.key)
                )
                self._reply(request_id, {"value": state.value, "version": state.version})
            else:
                self._reply(request_id, self.keyspace.read(request))
        except KvError as error:
            self._reply(request_id, error)

    # -- the replication log and its stream --------------------------------------

    def _next_log_position(self) -> LogPosition:
        position = (self.incarnation, self._log_next_seq)
        self._log_next_seq += 1
        return position

    def _append_log(self, position: LogPosition, record: LogRecord) -> None:
        assert position > self._log_last
        self._log_last = position
        self._write(
            [("log", durable.position_key(position), durable.log_record_to_bytes(record))]
        )

    def _pump_streams(self) -> None:
        """Send each peer the log records after what was sent, within its window."""
        for peer, stream in self._streams.items():
            if stream.acked is None or stream.sent >= self._log_last:
                continue
            start = max(stream.sent, stream.acked)
            if (
                start[0] == stream.acked[0]
                and start[1] - stream.acked[1] >= self.options.stream_window_records
            ):
                continue  # the window is full until the peer acks
            found = self.storage.scan(
                "log",
                durable.position_key(start) + b"\x00",
                None,
                self.options.stream_batch_records_max,
            )
            if not found:
                continue
            batch = tuple(
                (
                    durable.position_from_key(stored_key),
                    durable.log_record_from_bytes(stored, stored_key),
                )
                for stored_key, stored in found
            )
            self._send(peer, StreamRecords(start, batch))
            stream.sent = batch[-1][0]

    def on_stream_records(self, source: int, message: StreamRecords) -> None:
        cursor = self._cursors.get(source, LOG_START)
        if message.after > cursor:
            self._send(source, StreamAck(cursor))  # a gap: resend from our cursor
            return
        touched_refs = []
        for position, record in message.records:
            if position <= cursor:
                continue  # already held: storing is idempotent
            match record:
                case PayloadRecord(ref=ref, key=key, payload=payload):
                    if not self._store_payload(ref, key, payload):
                        break  # corrupt: don't act on it, don't ack past it (invariant 5)
                    touched_refs.append((ref, key))
                case DecisionRecord(key=key, instance=instance):
                    self.learn_decision(key, instance)
            cursor = position
        self._cursors[source] = cursor
        self._write([("cursors", durable.origin_key(source), _encode_value(list(cursor)))])
        self._send(source, StreamAck(cursor))
        self._last_ack_tick[source] = self.now
        for ref, key in touched_refs:
            self._on_payload_stored(ref, key)

    def on_stream_ack(self, source: int, message: StreamAck) -> None:
        stream = self._streams[source]
        position = message.position
        if stream.acked is None or position > stream.acked:
            stream.acked = position
            stream.last_progress_tick = self.now
        # An ack below what was sent means records are still in flight, or
        # were lost: the retransmit timer (on tick) covers the second case.
        stream.sent = max(stream.sent, stream.acked)

    def _on_stream_tick(self) -> None:
        for stream in self._streams.values():
            if stream.acked is not None and stream.sent > stream.acked and (
                self.now - stream.last_progress_tick >= self.options.stream_retransmit_ticks
            ):
                stream.sent = stream.acked  # go back and resend from the ack
                stream.last_progress_tick = self.now
        for origin in self.peers:
            if self.now - self._last_ack_tick.get(origin, -(10**9)) >= (
                self.options.stream_ack_interval_ticks
            ):
                self._last_ack_tick[origin] = self.now
                self._send(origin, StreamAck(self._cursors.get(origin, LOG_START)))

    # -- for the simulator and the shell ------------------------------------------

    def consensus_snapshot(self, key: bytes) -> durable.KeyConsensus:
        return self._consensus_of(key)


def _ignore(event: str, details: Any) -> None:
    pass


def _remember(consensus: durable.KeyConsensus, instance: Instance) -> None:
    if instance in consensus.recent:
        return
    consensus.recent.append(instance)
    consensus.recent.sort(key=lambda item: item.first_version)
    del consensus.recent[: -durable.RECENT_DECISIONS_MAX]


def _decode_mutations(payload: bytes) -> list[model.Mutation]:
    return [model.mutation_from_wire(item) for item in cbor2.loads(payload)]


def _encode_value(value: object) -> bytes:
    return records.encode_record(value)


def _decode_value(stored: bytes, stored_key: bytes) -> Any:
    return records.decode_record(stored, column_family="replication", key=stored_key)


def _encode_int(value: int) -> bytes:
    return _encode_value(value)


def _decode_int(stored: bytes, stored_key: bytes) -> int:
    value = _decode_value(stored, stored_key)
    assert isinstance(value, int)
    return value


def _state_digest(replica: Replica, key: bytes) -> int:
    """A hash of key's applied state, compared across replicas per version."""
    state = replica.keyspace.key_state(key)
    parts = [state.version, state.kind, state.value]
    if state.kind == model.KIND_TABLE:
        parts.append([[row_id, row.version, row.value] for row_id, row in replica.keyspace.all_rows(key)])
    return crc32c.crc32c(cbor2.dumps(parts))


__all__ = ["Replica", "ReplicaOptions", "ZERO_BALLOT"]
