"""The proposer: coordinating writes to a key (docs/protocol-rules.md, write steps 1-6).

Theory of operation. Any replica coordinates any key. Its proposer state
for a key lives in memory only (R2): a restart forgets every promise, and
nothing is inferred from the local acceptor's record.

1. A client write joins the key's queue. One instance per key is in flight
   at a time; writes that arrive meanwhile go together into the next one
   (dynamic merging, bounded by `batch_mutations_max` and
   `batch_payload_max_bytes`).
2. Without a promise, the proposer runs Prepare with a ballot
   (round, incarnation, node id) whose round is above any it has seen (R1
   makes the ballot unique across restarts). Only Promises echoing that
   ballot count (R5). A majority of grants teaches it the highest decided
   instance; the vote with the highest ballot among the grants for the
   version after it is proposed again, unchanged, before anything new
   (recovery). A rejection ends the round: the next one waits a random,
   exponentially growing number of ticks (R6).
3. With the promise held and the key applied up to its decided version,
   conditions are checked against that state; passing writes form the
   batch, each checked against the state the writes before it make. A
   condition that fails is answered only after a quorum read confirmed the
   state it was checked against is still the newest, and one that fails on
   a state a pending batch makes waits for that batch (R7).
4. The batch's payload is appended to the log; Accept(K, b, v, ref,
   prev_decision) goes to every member, the proposer's own acceptor
   included. Its value is frozen once sent: resends are identical (R8).
5. A majority of Accepted replies naming the same (b, v, ref) (R5) is a
   decision: learned, logged, applied, answered, and sent as Commit. The
   promise is kept, so the next batch needs one round trip (the fast path).
6. Once an Accept has left, only a decision settles its writes (R9):
   success when their ref is decided at their version; back into the queue
   only once another ref is known decided there; `timeout` (outcome
   unknown, never "failed") if the client's deadline comes first. A
   proposer whose Accept lost to another ballot does not wait for others
   to settle the version: it prepares again (after its backoff), and if
   the new majority holds no vote there, proposes the same instance again,
   unchanged, under the new ballot. Without this, coordinators that all
   lost a duel on a key would each wait for a decision none of them makes.

Calls into other parts (its `USES`; the replica connects exactly these):
acceptor: `advance`, `learn_decision`, `on_payload_stored`; log_stream:
`append_log`, `next_log_position`; payloads: `payload`, `store_payload`;
reads: `start_read`.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import TYPE_CHECKING

import cbor2
import crc32c

from kvsvr.core import model
from kvsvr.core.requests import Write
from kvsvr.protocol.errors import ConditionFailed, KvError, Timeout, TooLarge
from kvsvr.replication import durable, events
from kvsvr.replication.core import Part, ReplicaCore, votes_after
from kvsvr.replication.messages import (
    Accept,
    Accepted,
    AcceptOutcome,
    Ballot,
    Commit,
    DecisionRecord,
    Instance,
    PayloadRecord,
    Prepare,
    Promise,
    Ref,
)
from kvsvr.replication.options import payload_size_max_bytes
from kvsvr.replication.reads import ConditionCheck
from kvsvr.storage import Family

if TYPE_CHECKING:
    from kvsvr.replication.acceptor import Acceptor
    from kvsvr.replication.log_stream import LogStream
    from kvsvr.replication.payloads import PayloadStore
    from kvsvr.replication.reads import Reads


@dataclasses.dataclass
class ClientWrite:
    request_id: int
    request: Write
    deadline: int
    result: dict | None = None  # set when it joins a batch
    fast_path: bool = False  # its batch went out under a promise an earlier batch used


class Phase(enum.Enum):
    """Where a key's proposer is: between rounds, or waiting for a round's answers."""

    IDLE = "idle"
    PREPARING = "preparing"
    ACCEPTING = "accepting"


@dataclasses.dataclass
class KeyProposer:
    """One key's proposer state. Memory only: lost on restart (R2)."""

    ballot: Ballot | None = None  # a promise a majority granted us
    round_seen: int = 0
    phase: Phase = Phase.IDLE
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
    # The promise held was won for the next batch (its Prepare is part of
    # that batch's cost); False once a batch has gone out under it.
    promise_fresh: bool = False
    # Writes whose Accept left, by the first version they were proposed at:
    # one (ref, writes) per proposal. A coordinator may propose twice at one
    # version (its first Accept reached no quorum, a new Prepare found no
    # vote); each batch waits for the decision at that version (R9).
    proposed: dict[int, list[tuple[Ref, list[ClientWrite]]]] = dataclasses.field(
        default_factory=dict
    )
    # The instance each ref in `proposed` was first sent as, to propose it
    # again unchanged under a newer ballot (step 6).
    proposed_instances: dict[Ref, Instance] = dataclasses.field(default_factory=dict)


class Proposer(Part):
    USES = (Family.ACCEPTOR, "log_stream", "payloads", "reads")
    acceptor: Acceptor
    log_stream: LogStream
    payloads: PayloadStore
    reads: Reads

    def __init__(self, core: ReplicaCore) -> None:
        super().__init__(core)
        self._proposers: dict[bytes, KeyProposer] = {}
        # The keys whose proposer has something the tick must time (a round,
        # queued or proposed writes, a wanted recovery), in the order they
        # became so (a dict as an ordered set: a run replays from its seed).
        # An idle proposer that only holds a promise costs no tick.
        self._proposers_ticking: dict[bytes, None] = {}
        # Writes answered success, by path: "fast_path" (one round trip: the
        # promise was already held) or "prepared" (a Prepare round first).
        self.writes_decided: collections.Counter = collections.Counter()

    def submit_write(self, request_id: int, request: Write, deadline: int) -> None:
        proposer = self._proposer(request.key)
        proposer.queue.append(ClientWrite(request_id, request, deadline))
        self.drive(request.key)

    def _proposer(self, key: bytes) -> KeyProposer:
        proposer = self._proposers.get(key)
        if proposer is None:
            proposer = self._proposers[key] = KeyProposer()
            if self.options.bug_promise_inferred_after_restart:
                promised = self._consensus_of(key).promised
                if promised[2] == self.node_id:
                    proposer.ballot = promised
        self._proposers_ticking[key] = None
        return proposer

    def pins(self, key: bytes, ref: Ref) -> bool:
        """Whether `ref` is in flight or proposed here for `key` (its payload
        must not be collected: payloads.py)."""
        proposer = self._proposers.get(key)
        if proposer is None:
            return False
        if proposer.accept is not None and proposer.accept.instance.ref == ref:
            return True
        return any(
            proposed_ref == ref
            for proposals in proposer.proposed.values()
            for proposed_ref, _writes in proposals
        )

    def want_recovery(self, key: bytes) -> None:
        """Run a recovery round for `key` (a read found votes it cannot settle)."""
        self._proposer(key).recovery_wanted = True
        self.drive(key)

    def retry_write(self, key: bytes, write: ClientWrite) -> None:
        """Put a write back at the head of the queue (its condition's state moved on)."""
        self._proposer(key).queue.appendleft(write)
        self.drive(key)

    def drive(self, key: bytes) -> None:
        """Move key's proposer forward as far as it can go now."""
        proposer = self._proposers.get(key)
        if proposer is None:
            return
        self._proposers_ticking[key] = None
        if proposer.phase != Phase.IDLE:
            return
        if not proposer.queue and not proposer.recovery_wanted and not proposer.proposed:
            return
        if proposer.backoff_until > self.now:
            return
        if proposer.ballot is None or proposer.recovery_wanted:
            self._start_prepare(key, proposer)
            return
        consensus = self._consensus_of(key)
        if self._applied_version(key) < consensus.chosen_version:
            self.acceptor.advance(key)  # catching up; drives again once it progresses
            return
        self._start_instance(key, proposer, consensus)

    # -- step 2: Prepare, recovery -----------------------------------------------

    def _start_prepare(self, key: bytes, proposer: KeyProposer) -> None:
        consensus = self._consensus_of(key)
        round_number = max(proposer.round_seen, consensus.promised[0]) + 1
        proposer.round_seen = round_number
        proposer.prepare_ballot = (round_number, self.incarnation, self.node_id)
        proposer.ballot = None
        proposer.recovery_wanted = False
        proposer.promises = {}
        proposer.phase = Phase.PREPARING
        proposer.attempts = 0
        proposer.round_deadline = self.now + self.options.round_timeout_ticks
        self._broadcast(Prepare(key, proposer.prepare_ballot))

    def on_promise(self, source: int, message: Promise) -> None:
        key = message.key
        proposer = self._proposers.get(key)
        if proposer is None:
            return
        proposer.round_seen = max(proposer.round_seen, message.promised[0])
        if proposer.phase != Phase.PREPARING or message.ballot != proposer.prepare_ballot:
            return  # a reply to an older round (R5)
        if message.chosen is not None:
            self.acceptor.learn_decision(key, message.chosen)
        if message.accepted is not None and message.accepted_payload is not None:
            ref = message.accepted.instance.ref
            if self.payloads.store_payload(ref, key, message.accepted_payload):
                self.acceptor.on_payload_stored(ref, key)
        if not message.granted:
            self._lose_round(proposer)
            self.drive(key)
            return
        proposer.promises[source] = message
        if len(proposer.promises) < self.majority:
            return
        # A majority promised: the highest accepted value above the decided
        # one must be proposed again, unchanged, before anything new.
        proposer.ballot = proposer.prepare_ballot
        proposer.promise_fresh = True
        proposer.phase = Phase.IDLE
        proposer.lost_rounds = 0
        consensus = self._consensus_of(key)
        decided = consensus.chosen_version
        votes = votes_after(decided, (promise.accepted for promise in proposer.promises.values()))
        if votes:
            recovered = max(votes, key=lambda vote: vote.ballot).instance
            self._send_accept(key, proposer, recovered, consensus.chosen)
            return
        # No vote above the decided version in this majority: a batch of ours
        # still waiting there (its Accept lost to another ballot) goes again,
        # unchanged, rather than wait for a decision no one else will make.
        waiting = proposer.proposed.get(decided + 1)
        if waiting:
            instance = proposer.proposed_instances.get(waiting[-1][0])
            if instance is not None and self.payloads.payload(instance.ref) is not None:
                self.observer(events.Reproposed(self.node_id, key, instance))
                self._send_accept(key, proposer, instance, consensus.chosen)
                return
        self.drive(key)

    # -- steps 3-4: conditions, the batch, Accept ------------------------------------

    def _start_instance(
        self, key: bytes, proposer: KeyProposer, consensus: durable.KeyConsensus
    ) -> None:
        """Batch the queued writes that pass their checks into one instance."""
        state = self.keyspace.key_state(key)
        assert state.version == consensus.chosen_version
        batch: list[ClientWrite] = []
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
                if isinstance(error, ConditionFailed) and not (
                    self.options.bug_condition_failed_unconfirmed
                ):
                    # R7: answered only once a quorum confirms this is the newest state.
                    self.reads.start_read(key, ConditionCheck(write, state.version), write.deadline)
                else:
                    self._reply(write.request_id, error)
                continue
            wire = model.mutation_to_wire(request.mutation)
            size = len(cbor2.dumps(wire))
            if size > payload_size_max_bytes(self.limits):
                # It could never travel to a peer in one frame.
                proposer.queue.popleft()
                self._reply(write.request_id, TooLarge(
                    f"the write to {key!r} is {size} bytes encoded; a replicated write holds "
                    f"at most {payload_size_max_bytes(self.limits)}"))
                continue
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
        for write in batch:
            write.fast_path = not proposer.promise_fresh
        proposer.promise_fresh = False
        payload = cbor2.dumps(mutations)
        position = self.log_stream.next_log_position()
        ref: Ref = (self.node_id, self.incarnation, position[1], crc32c.crc32c(payload))
        self.observer(events.PayloadSeen(ref, payload))
        self.log_stream.append_log(position, PayloadRecord(ref, key, payload))  # our payloads live in our log
        instance = Instance(consensus.chosen_version + 1, len(batch), ref)
        proposer.proposed.setdefault(instance.first_version, []).append((ref, batch))
        proposer.proposed_instances[ref] = instance
        self._send_accept(key, proposer, instance, consensus.chosen)

    def _send_accept(
        self, key: bytes, proposer: KeyProposer, instance: Instance, previous: Instance | None
    ) -> None:
        proposer.accept = Accept(key, proposer.ballot, instance, previous)
        proposer.votes = set()
        proposer.phase = Phase.ACCEPTING
        proposer.attempts = 0
        proposer.round_deadline = self.now + self.options.round_timeout_ticks
        self.observer(events.AcceptSent(self.node_id, proposer.accept))
        self._broadcast(proposer.accept)

    # -- steps 5-6: decisions --------------------------------------------------------

    def on_accepted(self, source: int, message: Accepted) -> None:
        key = message.key
        proposer = self._proposers.get(key)
        if proposer is not None:
            proposer.round_seen = max(proposer.round_seen, message.promised[0])
        if message.outcome == AcceptOutcome.ALREADY_CHOSEN:
            if message.decided is not None:
                self.acceptor.learn_decision(key, message.decided)
            if message.chosen is not None:
                self.acceptor.learn_decision(key, message.chosen)
        if (
            proposer is None
            or proposer.phase != Phase.ACCEPTING
            or message.ballot != proposer.accept.ballot
            or (
                message.instance != proposer.accept.instance
                and not self.options.bug_accepted_counted_by_ballot
            )
        ):
            return  # stale or about another value (R5)
        if message.outcome == AcceptOutcome.ACCEPTED:
            proposer.votes.add(source)
            if len(proposer.votes) >= self.majority:
                self._on_chosen(key, proposer)
            return
        # Rejected, or the version is already decided: our view is old. The
        # writes in flight stay attached to their ref until a decision settles
        # them (R9); a new Prepare will recover or supersede the value.
        proposer.phase = Phase.IDLE
        proposer.ballot = None
        if message.outcome == AcceptOutcome.REJECTED:
            self._lose_round(proposer)
            if self.options.bug_rejected_writes_requeued:
                for _ref, writes in proposer.proposed.pop(message.instance.first_version, ()):
                    proposer.queue.extendleft(reversed(writes))
        self.drive(key)

    def _on_chosen(self, key: bytes, proposer: KeyProposer) -> None:
        instance = proposer.accept.instance
        self.observer(events.Won(self.node_id, key, proposer.accept.ballot, instance))
        proposer.phase = Phase.IDLE
        proposer.accept = None
        for peer in self.peers:
            self._send(peer, Commit(key, instance))
        self.acceptor.learn_decision(key, instance)
        # Logged after the acceptor record that holds it as chosen: a crash keeps
        # a prefix of the writes, so whenever the Decision record survives, so
        # does `chosen`, and a peer handed to state transfer finds every logged
        # decision by walking our keys (R11).
        self.log_stream.append_log(self.log_stream.next_log_position(), DecisionRecord(key, instance))
        self.drive(key)

    def settle_proposed(self, key: bytes, decided: Instance) -> None:
        """Answer or requeue the writes proposed at versions `decided` covers (R9)."""
        proposer = self._proposers.get(key)
        if proposer is None or not proposer.proposed:
            return
        for first_version in range(decided.first_version, decided.last_version + 1):
            for ref, writes in proposer.proposed.pop(first_version, ()):
                proposer.proposed_instances.pop(ref, None)
                if first_version == decided.first_version and ref == decided.ref:
                    for write in writes:
                        self.writes_decided["fast_path" if write.fast_path else "prepared"] += 1
                        self._reply(write.request_id, write.result)
                else:
                    # Another value was decided at this version: ours may go again.
                    self._proposers_ticking[key] = None
                    for write in reversed(writes):
                        write.result = None
                        proposer.queue.appendleft(write)

    # -- time ------------------------------------------------------------------------

    def _lose_round(self, proposer: KeyProposer) -> None:
        """R6: back off a random, exponentially growing number of ticks."""
        proposer.phase = Phase.IDLE
        if not self.options.bug_round_given_up_keeps_promise:
            proposer.ballot = None
        proposer.lost_rounds += 1
        ceiling = min(
            self.options.backoff_max_ticks,
            self.options.backoff_base_ticks * 2 ** min(proposer.lost_rounds, 16),
        )
        proposer.backoff_until = self.now + self.rng.randint(1, ceiling)
        if self.options.bug_no_backoff:
            proposer.backoff_until = self.now

    def on_tick(self) -> None:
        for key in list(self._proposers_ticking):
            self._on_proposer_tick(key)

    def _on_proposer_tick(self, key: bytes) -> None:
        proposer = self._proposers.get(key)
        if proposer is None:
            del self._proposers_ticking[key]
            return
        for write in [w for w in proposer.queue if w.deadline <= self.now]:
            proposer.queue.remove(write)
            self._reply(write.request_id, Timeout("no decision before the deadline"))
        self._expire_proposed(proposer)
        if proposer.phase in (Phase.PREPARING, Phase.ACCEPTING) and proposer.round_deadline <= self.now:
            proposer.attempts += 1
            if proposer.attempts > self.options.round_attempts_max:
                self._lose_round(proposer)
            else:
                proposer.round_deadline = self.now + self.options.round_timeout_ticks
                if proposer.phase == Phase.PREPARING:
                    message = Prepare(key, proposer.prepare_ballot)
                    answered = set(proposer.promises)
                else:
                    message = proposer.accept  # identical resend (R8)
                    answered = proposer.votes
                for member in self.members:
                    if member not in answered:
                        self._send(member, message)
        self.drive(key)
        if (
            proposer.phase == Phase.IDLE
            and not proposer.queue
            and not proposer.proposed
            and not proposer.recovery_wanted
        ):
            del self._proposers_ticking[key]
            if proposer.ballot is None:
                del self._proposers[key]

    def _expire_proposed(self, proposer: KeyProposer) -> None:
        for first_version, proposals in list(proposer.proposed.items()):
            for _ref, writes in proposals:
                for write in [write for write in writes if write.deadline <= self.now]:
                    # R9: an Accept left; without a decision the outcome is unknown.
                    self._reply(write.request_id, Timeout("outcome unknown: no decision learned"))
                    writes.remove(write)
            for ref, writes in proposals:
                if not writes:
                    proposer.proposed_instances.pop(ref, None)
            proposals[:] = [proposal for proposal in proposals if proposal[1]]
            if not proposals:
                del proposer.proposed[first_version]
