"""The acceptor: Prepare and Accept rules, R4 (parked Accepts), R5 (echoes), R8.

Each test drives one replica's acceptor with hand-made messages and reads
what it answers. A reply that vouches for state (Promise, Accepted) must
come in effects that ask for a sync first.
"""

from __future__ import annotations

import random

import cbor2
import crc32c
import pytest
from replication_test_support import AT_ONCE

from kvsvr.replication.messages import (
    LOG_START,
    Accept,
    Accepted,
    Commit,
    FetchPayload,
    Instance,
    PayloadRecord,
    PayloadReply,
    Prepare,
    Promise,
    StreamRecords,
    Vote,
)
from kvsvr.replication.options import DEFAULT_OPTIONS
from kvsvr.replication.replica import PeerInputError, Replica, ReplicaOptions
from kvsvr.storage import MemoryStorage

KEY = b"k"


def started_acceptor(node_id: int = 1, options: ReplicaOptions = AT_ONCE) -> Replica:
    storage = MemoryStorage()
    replica = Replica(node_id, (1, 2, 3), storage, random.Random(0), options)
    replica.start()
    storage.sync()
    return replica


def payload_of(value: bytes) -> bytes:
    return cbor2.dumps([["put", value]])


def ref_for(origin: int, seq: int, payload: bytes):
    return (origin, 1, seq, crc32c.crc32c(payload))


def answers(effects, kind):
    return [message for _, message in effects.messages if isinstance(message, kind)]


def give_payload(replica: Replica, ref, payload: bytes):
    return replica.step(ref[0], PayloadReply(ref, KEY, payload))


def test_acceptor_grants_prepare_at_or_above_promise_and_rejects_below():
    replica = started_acceptor()
    effects = replica.step(2, Prepare(KEY, (5, 1, 2)))
    [promise] = answers(effects, Promise)
    assert promise.granted and promise.promised == (5, 1, 2) and effects.sync
    retransmit = replica.step(2, Prepare(KEY, (5, 1, 2)))  # idempotent
    assert answers(retransmit, Promise)[0].granted
    lower = replica.step(3, Prepare(KEY, (4, 9, 3)))
    [refusal] = answers(lower, Promise)
    assert not refusal.granted and refusal.promised == (5, 1, 2)
    assert refusal.ballot == (4, 9, 3)  # R5: the reply echoes the Prepare
    assert replica.consensus_snapshot(KEY).promised == (5, 1, 2)


def test_acceptor_promise_reports_chosen_accepted_and_the_accepted_payload():
    replica = started_acceptor()
    payload = payload_of(b"x")
    ref = ref_for(2, 7, payload)
    give_payload(replica, ref, payload)
    replica.step(2, Accept(KEY, (1, 1, 2), Instance(1, 1, ref), None))
    [promise] = answers(replica.step(3, Prepare(KEY, (2, 1, 3))), Promise)
    assert promise.granted
    assert promise.accepted == Vote((1, 1, 2), Instance(1, 1, ref))
    assert promise.accepted_payload == payload
    assert promise.chosen is None


def test_acceptor_accepts_only_the_version_after_the_decided_one_it_carries():
    """An acceptor behind records prev_decision as pending and accepts v before
    it has applied v-1 (consensus is on the mutation, not the state)."""
    replica = started_acceptor(options=DEFAULT_OPTIONS)
    first_payload, second_payload = payload_of(b"a"), payload_of(b"b")
    first = Instance(1, 1, ref_for(2, 1, first_payload))
    second = Instance(2, 1, ref_for(2, 2, second_payload))
    give_payload(replica, second.ref, second_payload)  # v1's payload is missing here
    effects = replica.step(2, Accept(KEY, (1, 1, 2), second, first))
    [accepted] = answers(effects, Accepted)
    assert accepted.outcome == "accepted" and effects.sync
    consensus = replica.consensus_snapshot(KEY)
    assert consensus.chosen == first and consensus.pending == {1: first}
    assert replica.keyspace.key_state(KEY).version == 0  # not applied: v1's payload is missing
    # v1's payload is most likely on its origin's stream: it is asked for
    # only once that had its grace.
    assert not any(isinstance(message, FetchPayload) for _, message in effects.messages)
    fetches = []
    for _ in range(DEFAULT_OPTIONS.payload_fetch_grace_ticks + 1):
        fetches += [message for _, message in replica.tick().messages
                    if isinstance(message, FetchPayload)]
    assert fetches == [FetchPayload(first.ref)]


def test_a_payload_that_arrives_on_the_stream_in_its_grace_is_never_fetched():
    replica = started_acceptor(options=DEFAULT_OPTIONS)
    payload = payload_of(b"a")
    instance = Instance(1, 1, ref_for(2, 1, payload))
    effects = replica.step(2, Accept(KEY, (1, 1, 2), instance, None))
    assert answers(effects, Accepted) == []  # parked until its payload is here
    record = PayloadRecord(instance.ref, KEY, payload)
    effects = replica.step(2, StreamRecords(LOG_START, (((1, 1), record),)))
    assert answers(effects, Accepted)[0].outcome == "accepted"
    sent = []
    for _ in range(DEFAULT_OPTIONS.payload_fetch_grace_ticks + DEFAULT_OPTIONS.fetch_retry_ticks):
        sent += [message for _, message in replica.tick().messages]
    assert not any(isinstance(message, FetchPayload) for message in sent)


def test_acceptor_answers_already_chosen_with_the_ref_decided_at_that_version():
    replica = started_acceptor()
    payloads = [payload_of(b"a"), payload_of(b"b")]
    decided = [Instance(v + 1, 1, ref_for(2, v + 1, payloads[v])) for v in range(2)]
    for instance, payload in zip(decided, payloads, strict=True):
        give_payload(replica, instance.ref, payload)
        replica.step(2, Commit(KEY, instance))
    assert replica.consensus_snapshot(KEY).chosen_version == 2
    late = Instance(1, 1, ref_for(3, 1, payload_of(b"late")))
    [answer] = answers(replica.step(3, Accept(KEY, (9, 1, 3), late, None)), Accepted)
    assert answer.outcome == "already_chosen"
    assert answer.decided == decided[0]  # what won v1, so the proposer can settle (R9)
    assert answer.chosen == decided[1]


def test_r4_parked_accept_rechecks_promise_when_payload_lands():
    """An Accept waiting for its payload is checked again in full when the
    payload lands: a promise given meanwhile wins."""
    replica = started_acceptor()
    payload = payload_of(b"x")
    ref = ref_for(2, 1, payload)
    parked = replica.step(2, Accept(KEY, (1, 1, 2), Instance(1, 1, ref), None))
    assert not answers(parked, Accepted)
    assert [m.ref for m in answers(parked, FetchPayload)] == [ref]
    assert answers(replica.step(3, Prepare(KEY, (2, 1, 3))), Promise)[0].granted
    landed = give_payload(replica, ref, payload)
    [answer] = answers(landed, Accepted)
    assert answer.outcome == "rejected" and answer.promised == (2, 1, 3)
    assert replica.consensus_snapshot(KEY).accepted is None


def test_r4_parked_accept_is_accepted_when_payload_lands_and_nothing_changed():
    replica = started_acceptor()
    payload = payload_of(b"x")
    ref = ref_for(2, 1, payload)
    replica.step(2, Accept(KEY, (1, 1, 2), Instance(1, 1, ref), None))
    replica.step(2, Accept(KEY, (1, 1, 2), Instance(1, 1, ref), None))  # a resend, parked too
    landed = give_payload(replica, ref, payload)
    assert {answer.outcome for answer in answers(landed, Accepted)} == {"accepted"}
    assert landed.sync
    assert replica.consensus_snapshot(KEY).accepted == Vote((1, 1, 2), Instance(1, 1, ref))


def test_r4_payload_with_a_wrong_checksum_does_not_release_a_parked_accept():
    replica = started_acceptor()
    payload = payload_of(b"x")
    ref = ref_for(2, 1, payload)
    replica.step(2, Accept(KEY, (1, 1, 2), Instance(1, 1, ref), None))
    tampered = give_payload(replica, ref, payload_of(b"y"))
    assert not answers(tampered, Accepted)
    assert replica.consensus_snapshot(KEY).accepted is None


def test_r5_accepted_echoes_ballot_version_and_ref():
    replica = started_acceptor()
    payload = payload_of(b"x")
    ref = ref_for(2, 1, payload)
    give_payload(replica, ref, payload)
    accept = Accept(KEY, (1, 1, 2), Instance(1, 1, ref), None)
    [answer] = answers(replica.step(2, accept), Accepted)
    assert (answer.key, answer.ballot, answer.instance) == (KEY, accept.ballot, accept.instance)


@pytest.mark.parametrize(
    ("proposer", "error"),
    [(2, PeerInputError), (1, AssertionError)],
    ids=["from a peer: bad input", "from ourselves: our bug"],
)
def test_r8_a_second_ref_for_one_ballot_and_version_is_never_accepted(proposer, error):
    """Two values for one (key, ballot, version): from a peer it is bad input
    (PeerInputError, the shell drops the link); from our own proposer it is
    our bug, and the acceptor stops. Either way the first vote stays."""
    replica = started_acceptor()
    first, second = payload_of(b"x"), payload_of(b"y")
    first_ref, second_ref = ref_for(proposer, 1, first), ref_for(proposer, 2, second)
    give_payload(replica, first_ref, first)
    give_payload(replica, second_ref, second)
    ballot = (1, 1, proposer)
    replica.step(proposer, Accept(KEY, ballot, Instance(1, 1, first_ref), None))
    with pytest.raises(error, match="R8"):
        replica.step(proposer, Accept(KEY, ballot, Instance(1, 1, second_ref), None))
    assert replica.consensus_snapshot(KEY).accepted.instance.ref == first_ref
