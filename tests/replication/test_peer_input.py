"""A peer's message is bad input until checked (peer_input.py, STYLE.md §7).

The property: whatever bytes a peer sends, decoding them and stepping the
replica either acts on a valid message or raises CodecError/PeerInputError
having changed nothing; no other exception ever comes out of the core for
a peer's message, and the replica goes on serving. The examples below pin
the checks a property run found or that the issue names (an Accept with a
null instance used to stop a node with an AttributeError).
"""

from __future__ import annotations

import random

import cbor2
import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peer_message_strategies import MEMBERS, PAYLOADS, message_bodies, messages
from replication_test_support import Group

from kvsvr.replication.codec import CodecError, decode_message, encode_message
from kvsvr.replication.messages import (
    Accept,
    Commit,
    DecisionRecord,
    Instance,
    PayloadRecord,
    Prepare,
    StreamRecords,
)
from kvsvr.replication.peer_input import PeerInputError
from kvsvr.replication.replica import Replica
from kvsvr.storage import MemoryStorage

KEY = b"k"


def started_replica() -> Replica:
    replica = Replica(1, MEMBERS, MemoryStorage(), random.Random(0))
    replica.start()
    return replica


def durable_view(replica: Replica) -> dict:
    """What a refused message must not change: every stored record."""
    storage = replica.storage
    return {
        family: storage.scan(family, b"", None, 1 << 20)
        for family in ("acceptor", "keys", "payloads", "log", "cursors", "meta")
    }


def step_body(replica: Replica, source: int, body: bytes, group: Group, node_id: int) -> bool:
    """Step one frame's body at `node_id`; True if it was acted on, False if refused."""
    try:
        message = decode_message(body)
    except CodecError:
        return False
    before = durable_view(replica)
    try:
        group.step(source, node_id, message)
    except PeerInputError:
        assert durable_view(replica) == before, "a refused message changed stored state"
        return False
    return True


def group_with_history() -> Group:
    """Three replicas that decided a write on a value key and an append on a
    table key, so drawn messages meet keys with votes, decisions and rows."""
    group = Group()
    for request_id in (group.put(1, b"k1", b"a"), group.append(1, b"t1", b"a")):
        group.run_until(lambda request_id=request_id: group.answered(request_id))
    group.deliver()
    return group


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(message_bodies, min_size=1, max_size=8),
       targets=st.lists(st.sampled_from(MEMBERS), min_size=8, max_size=8))
def test_any_peer_frames_are_acted_on_or_refused_and_the_group_still_serves(bodies, targets):
    group = group_with_history()
    for body, target in zip(bodies, targets, strict=False):
        source = 2 if target != 2 else 3
        step_body(group.replica(target), source, body, group, target)
    # Still a working group: every replica takes a client write, and it is decided.
    for node_id in MEMBERS:
        request_id = group.put(node_id, b"after%d" % node_id, b"v")
        group.run_until(lambda request_id=request_id: group.answered(request_id))
        assert group.replies[request_id] == {"version": 1}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=st.lists(messages, min_size=1, max_size=8),
       targets=st.lists(st.sampled_from(MEMBERS), min_size=8, max_size=8))
def test_any_message_handed_to_the_core_directly_is_acted_on_or_refused(drawn, targets):
    """Without the codec in front (as in the simulator), ill-typed fields too
    meet peer_input.py's checks: refused, nothing stored changes."""
    group = group_with_history()
    for message, target in zip(drawn, targets, strict=False):
        source = 2 if target != 2 else 3
        before = durable_view(group.replica(target))
        try:
            group.step(source, target, message)
        except PeerInputError:
            assert durable_view(group.replica(target)) == before
    for node_id in MEMBERS:
        request_id = group.put(node_id, b"after%d" % node_id, b"v")
        group.run_until(lambda request_id=request_id: group.answered(request_id))
        assert group.replies[request_id] == {"version": 1}


def ref_of(origin: int, seq: int, payload: bytes):
    return (origin, 1, seq, crc32c.crc32c(payload))


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (Accept(KEY, (1, 1, 2), Instance(3, 1, ref_of(2, 1, PAYLOADS[0])), None),
         "does not follow"),
        (Accept(KEY, (1, 1, 3), Instance(1, 1, ref_of(2, 1, PAYLOADS[0])), None),
         "names its sender"),
        (Prepare(KEY, (1, 1, 7)), "not a member"),
        (Prepare(b"", (1, 1, 2)), "non-empty bytes"),
        (Commit(KEY, Instance(1, 0, ref_of(2, 1, PAYLOADS[0]))), "count"),
        (StreamRecords((0, 0), (((1, 1), PayloadRecord(ref_of(3, 1, PAYLOADS[0]), KEY,
                                                       PAYLOADS[0])),)), "own payloads"),
        (StreamRecords((0, 0), (((1, 1), PayloadRecord(ref_of(2, 1, b"\xff"), KEY, b"\xff")),)),
         "not a list of mutations"),
        (StreamRecords((1, 5), (((1, 2), DecisionRecord(KEY, Instance(
            1, 1, ref_of(2, 1, PAYLOADS[0])))),)), "positions must rise"),
    ],
)
def test_a_malformed_peer_message_is_refused_before_the_core_sees_it(message, reason):
    replica = started_replica()
    before = durable_view(replica)
    with pytest.raises(PeerInputError, match=reason):
        replica.step(2, decode_message(encode_message(message)))
    assert durable_view(replica) == before


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (Accept(KEY, (1, 1, 2), None, None), "must be an Instance"),
        (Commit(KEY, Instance(True, 1, ref_of(2, 1, PAYLOADS[0]))), "first version"),
        (Prepare("k", (1, 1, 2)), "non-empty bytes"),
        (Prepare(KEY, (1, 1)), "ballot"),
    ],
)
def test_an_ill_typed_peer_message_is_refused_by_the_codec_and_by_the_core(message, reason):
    """The codec decodes only what has the declared types; a message handed to
    the core some other way (the simulator) meets the same checks there."""
    with pytest.raises(CodecError):
        decode_message(encode_message(message))
    replica = started_replica()
    before = durable_view(replica)
    with pytest.raises(PeerInputError, match=reason):
        replica.step(2, message)
    assert durable_view(replica) == before


def test_a_decision_contradicting_a_known_one_is_refused_not_asserted():
    """Invariant 1 is ours to keep: a peer claiming a second decision for a
    version this node knows decided is bad input, and the known one stays."""
    group = Group()
    request_id = group.put(1, KEY, b"a")
    group.run_until(lambda: group.answered(request_id))
    group.deliver()
    replica = group.replica(1)
    known = replica.consensus_snapshot(KEY).chosen
    other = Instance(1, 1, ref_of(2, 9, PAYLOADS[0]))
    with pytest.raises(PeerInputError, match="contradicts"):
        replica.step(2, Commit(KEY, other))
    assert replica.consensus_snapshot(KEY).chosen == known


def test_a_decision_whose_count_disagrees_with_its_payload_is_refused():
    replica = started_replica()
    payload = cbor2.dumps([["put", b"x"]])
    ref = ref_of(2, 1, payload)
    replica.step(2, StreamRecords((0, 0), (((1, 1), PayloadRecord(ref, KEY, payload)),)))
    with pytest.raises(PeerInputError, match="disagrees with its payload"):
        replica.step(2, Commit(KEY, Instance(1, 2, ref)))
    assert replica.consensus_snapshot(KEY).chosen is None
