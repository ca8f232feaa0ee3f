"""Acceptor and learner: per-key votes, decisions, and applying them in order.

Theory of operation. For every key a replica keeps one durable record
(durable.KeyConsensus): the promised ballot, the accepted vote, the last
decided instance (`chosen`) and the decided instances not yet applied
(`pending`).

Acceptor (docs/protocol-rules.md, "Acceptor rules"):

- Prepare(K, b) is granted iff b >= promised; the reply carries chosen,
  the accepted vote and its payload, and echoes b (R5).
- Accept(K, b, v, ref, prev_decision) first records prev_decision (an
  acceptor behind may accept v before it applied v-1: consensus is on the
  mutation, not the state). Then: if v is already decided, the answer is
  already_chosen naming what won v (R9); a ballot below the promise is
  rejected; v must follow the decided instance; an acceptor that accepted
  another ref at this (b, v) stops (R8, an AssertionError). A missing
  payload parks the Accept, and every check runs again when the payload
  lands (R4): a promise given meanwhile wins. Accepting raises the promise.
  Parked Accepts are bounded (`parked_accepts_max`, oldest dropped: an
  unanswered Accept is resent by its proposer).
- Every reply leaves after the state behind it is synced: the step wrote
  it, so its effects ask for a sync, and messages wait for it.

Learner: `learn_decision` records a decided instance from anywhere (Commit,
the stream's Decision records, Accept's prev_decision, Promise, ReadReply,
state transfer); `_advance` applies decided instances in version order once
their payloads are here, and hands what it cannot fill to catch_up.py.
Applied versions never have gaps (invariant 4); only state transfer jumps,
and only upwards (R12).

Calls into other parts (its `USES`; the replica connects exactly these):
catch_up: `payload_arrived`, `fetch_payload`, `fetch_state`,
`payload_held_nowhere`; payloads: `payload`; proposer: `drive`,
`settle_proposed`; reads: `finish_reads_applied`, `waiting_apply`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvsvr.core import keyspace, model
from kvsvr.replication import events
from kvsvr.replication.core import (
    Part,
    ReplicaCore,
    decode_mutations,
    ignore_event,
    remember_decision,
    state_digest,
)
from kvsvr.replication.messages import (
    Accept,
    Accepted,
    AcceptOutcome,
    Instance,
    Prepare,
    Promise,
    Ref,
    Vote,
)
from kvsvr.replication.peer_input import held_payload_count
from kvsvr.storage import Family

if TYPE_CHECKING:
    from kvsvr.replication.catch_up import CatchUp
    from kvsvr.replication.payloads import PayloadStore
    from kvsvr.replication.proposer import Proposer
    from kvsvr.replication.reads import Reads


class Acceptor(Part):
    USES = ("catch_up", "payloads", "proposer", "reads")
    catch_up: CatchUp
    payloads: PayloadStore
    proposer: Proposer
    reads: Reads

    def __init__(self, core: ReplicaCore) -> None:
        super().__init__(core)
        # Accepts waiting for their payload, by ref, oldest ref first (R4).
        self._parked: dict[Ref, list[tuple[int, Accept]]] = {}
        self._parked_count = 0
        self.catching_up: set[bytes] = set()  # keys decided beyond what is applied

    # -- acceptor ----------------------------------------------------------------

    def on_prepare(self, source: int, message: Prepare) -> None:
        key = message.key
        consensus = self._consensus_of(key)
        granted = message.ballot >= consensus.promised
        if granted and message.ballot > consensus.promised:
            consensus.promised = message.ballot
            if self.options.bug_promise_not_synced:
                self._save(key, sync=False)  # written, but the Promise need not wait
            else:
                self._save(key)
        if granted:
            self.observer(events.Promised(self.node_id, key, message.ballot))
        accepted = consensus.accepted
        payload = None if accepted is None else self.payloads.payload(accepted.instance.ref)
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

    def on_accept(self, source: int, message: Accept, resumed: bool = False) -> None:
        key, ballot, instance = message.key, message.ballot, message.instance
        if message.previous is not None:
            self.learn_decision(key, message.previous)
        consensus = self._consensus_of(key)

        def answer(outcome: AcceptOutcome, decided: Instance | None = None) -> None:
            self._send(
                source,
                Accepted(
                    key, ballot, instance, outcome, consensus.promised, consensus.chosen, decided
                ),
            )

        if consensus.chosen_version >= instance.first_version:
            # already_chosen(v, ref): name what won v, not only the newest decision (R9).
            answer(AcceptOutcome.ALREADY_CHOSEN, consensus.decided_at(instance.first_version))
            return
        skip_promise_check = self.options.bug_skip_promise_check or (
            resumed and self.options.bug_parked_accept_not_rechecked
        )
        if ballot < consensus.promised and not skip_promise_check:
            answer(AcceptOutcome.REJECTED)
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
        payload = self.payloads.payload(instance.ref)
        if payload is None:
            # R4: park; every check above runs again when the payload lands.
            self._park(source, message)
            self.catch_up.fetch_payload(instance.ref, source)
            return
        if held_payload_count(payload) != instance.count:
            # A parked Accept whose payload, now here, disagrees with it: a
            # peer's bad input (peer_input.py checks those whose payload was
            # already here). No vote, no answer.
            return
        if ballot > consensus.promised:
            consensus.promised = ballot
        consensus.accepted = Vote(ballot, instance)
        self._save(key, sync=not self.options.bug_vote_lazily_durable)
        self.observer(events.Voted(self.node_id, key, ballot, instance))
        answer(AcceptOutcome.ACCEPTED)

    def _park(self, source: int, accept: Accept) -> None:
        parked = self._parked.setdefault(accept.instance.ref, [])
        if (source, accept) in parked:
            return  # a resend of an Accept already waiting
        parked.append((source, accept))
        self._parked_count += 1
        self.observer(events.Parked(self.node_id, accept.key, accept.instance))
        while self._parked_count > self.options.parked_accepts_max:
            # Bounded: the oldest wait is dropped unanswered; its proposer resends.
            oldest = next(iter(self._parked))
            self._parked_count -= len(self._parked.pop(oldest))

    def on_payload_stored(self, ref: Ref, key: bytes) -> None:
        parked = self._parked.pop(ref, ())
        self._parked_count -= len(parked)
        for source, accept in parked:
            self.on_accept(source, accept, resumed=True)
        self.catch_up.payload_arrived(ref)
        self.advance(key)

    # -- learner -----------------------------------------------------------------

    def learn_decision(self, key: bytes, instance: Instance) -> None:
        """Record that `instance` of `key` is decided, and apply what can be."""
        consensus = self._consensus_of(key)
        self.observer(events.Decided(self.node_id, key, instance))
        known = consensus.decided_at(instance.first_version)
        if known is not None:
            assert known == instance, (
                f"two decisions for {key!r} v{instance.first_version}: {known} and {instance}"
            )
            self.proposer.settle_proposed(key, instance)
            return
        applied = self._applied_version(key)
        changed = False
        if instance.first_version > applied:
            consensus.pending[instance.first_version] = instance
            changed = True
        if instance.last_version > consensus.chosen_version:
            consensus.chosen = instance
            changed = True
        remember_decision(consensus, instance)
        if changed:
            # Lazily durable: the decision is a chosen fact a majority's synced
            # votes can rebuild; losing it in a crash loses only knowledge.
            self._save(key, sync=False)
        self.proposer.settle_proposed(key, instance)
        self.advance(key)

    def advance(self, key: bytes) -> None:
        """Apply decided instances in version order; fetch what is missing."""
        consensus = self._consensus_of(key)
        state = self.keyspace.key_state(key)
        progressed = False
        while True:
            for first_version in [v for v in consensus.pending if v <= state.version]:
                del consensus.pending[first_version]
                progressed = True
            instance = consensus.pending.get(state.version + 1)
            if instance is None and self.options.bug_apply_past_a_gap and consensus.pending:
                instance = consensus.pending[min(consensus.pending)]
            if instance is None:
                break
            payload = self.payloads.payload(instance.ref)
            if payload is None:
                if self.catch_up.payload_held_nowhere(instance.ref):
                    # Every peer said it holds none (collected once applied):
                    # take the state at the decided version instead.
                    self.catch_up.fetch_state(key, consensus.chosen_version)
                else:
                    self.catch_up.fetch_payload(instance.ref, instance.ref[0])
                break
            mutations = decode_mutations(payload)
            assert len(mutations) == instance.count, f"payload {instance.ref} size mismatch"
            writes = []
            for mutation in mutations:
                applied = model.apply(state, mutation)
                writes.extend(keyspace.applied_writes(key, applied))
                if self.options.bug_delete_forgets_version and isinstance(mutation, model.Delete):
                    writes.append((Family.KEYS, key, None))
                state = applied.state
            del consensus.pending[instance.first_version]
            self._write(writes, sync=False)  # lazily durable, like the decision it applies
            if self.observer is not ignore_event:
                self.observer(events.Applied(self.node_id, key, state.version, state_digest(self, key)))
            progressed = True
        if progressed:
            self._save(key, sync=False)
        if consensus.chosen_version > state.version:
            self.catching_up.add(key)
            if consensus.pending.get(state.version + 1) is None:
                self.catch_up.fetch_state(key, consensus.chosen_version)
        else:
            self.catching_up.discard(key)
        if self.reads.waiting_apply(key):
            self.reads.finish_reads_applied(key, state.version)
        if progressed:
            self.proposer.drive(key)
