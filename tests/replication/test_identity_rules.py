"""R1-R3: names that never mean two things, and versions that never go back.

R1: a node's incarnation rises at every start and is synced before the node
sends anything; ballots and refs carry it. R2: "I hold the promise" lives
in proposer memory only. R3: a delete writes a tombstone at a new version.
"""

from __future__ import annotations

import random

from replication_test_support import Group, of_type

from kvsvr.protocol.errors import NotFound
from kvsvr.replication.messages import Accept, Prepare
from kvsvr.replication.replica import Replica
from kvsvr.storage import MemoryStorage

KEY = b"k"


def test_r1_incarnation_rises_and_is_synced_before_sending():
    """start() raises the incarnation, asks for a sync and sends nothing; a
    start whose sync was lost reuses the number, which nothing ever carried."""
    storage = MemoryStorage()
    replica = Replica(1, (1, 2, 3), storage, random.Random(0))
    effects = replica.start()
    assert replica.incarnation == 1
    assert effects.sync and not effects.messages and not effects.replies
    storage.crash(0)  # the sync never happened: incarnation 1 was never used
    replica = Replica(1, (1, 2, 3), storage, random.Random(0))
    replica.start()
    assert replica.incarnation == 1
    storage.sync()
    for expected in (2, 3):
        replica = Replica(1, (1, 2, 3), storage, random.Random(0))
        effects = replica.start()
        storage.sync()
        assert replica.incarnation == expected and effects.sync


def test_r1_ref_and_ballot_of_a_lost_log_tail_are_never_reused():
    """A crash that loses an unsynced payload cannot make its ref (or its
    ballot) name a different payload after the restart."""
    group = Group()
    # n1 prepares and writes; the Accept's effects are never synced: n1 crashes.
    group.put(1, KEY, b"first")
    group.deliver(of_type(Prepare))
    replica = group.replica(1)
    accepts_before = [message for _, _, message in group.sent if isinstance(message, Accept)]
    assert not accepts_before
    lost_effects = None
    promises = [envelope for envelope in group.in_flight if envelope[1] == 1]
    group.in_flight = [envelope for envelope in group.in_flight if envelope[1] != 1]
    for source, _, message in promises:
        effects = replica.step(source, message)  # not carried out: nothing synced or sent
        lost_effects = effects if any(isinstance(m, Accept) for _, m in effects.messages) else lost_effects
    lost_accept = next(m for _, m in lost_effects.messages if isinstance(m, Accept))
    group.crash(1)
    group.start(1)
    group.put(1, KEY, b"second")
    group.run_until(lambda: group.answered(2))
    accepts = [message for _, _, message in group.sent if isinstance(message, Accept)]
    assert accepts, "the restarted node proposed"
    for accept in accepts:
        assert accept.instance.ref != lost_accept.instance.ref
        assert accept.ballot != lost_accept.ballot
        assert accept.ballot[1] == 2 and accept.instance.ref[1] == 2  # the new incarnation


def test_r2_promise_is_not_inferred_from_local_acceptor_after_restart():
    """After a restart the coordinator prepares again, although its own acceptor
    still holds its old promise: the promise was proposer memory."""
    group = Group()
    group.put(1, KEY, b"a")
    group.run_until(lambda: group.answered(1))
    sent_before = len(group.sent)
    group.put(1, KEY, b"b")  # the fast path: straight to Accept
    group.run_until(lambda: group.answered(2))
    assert not any(isinstance(m, Prepare) for _, _, m in group.sent[sent_before:])
    group.crash(1)
    group.start(1)
    assert group.replica(1).consensus_snapshot(KEY).promised[2] == 1  # its own old promise
    sent_before = len(group.sent)
    group.put(1, KEY, b"c")
    group.run_until(lambda: group.answered(3))
    first = next(m for _, _, m in group.sent[sent_before:] if isinstance(m, (Prepare, Accept)))
    assert isinstance(first, Prepare)
    assert group.replies[3] == {"version": 3}


def test_r3_delete_writes_a_tombstone_at_a_new_version():
    """Delete makes version n+1 (a tombstone); the versions keep rising after it."""
    group = Group()
    first = group.put(1, KEY, b"a")
    deleted = group.delete(1, KEY)
    group.run_until(lambda: group.answered(first, deleted))
    assert group.replies[deleted] == {"version": 2, "existed": True}
    read = group.get(2, KEY)
    group.run_until(lambda: group.answered(read))
    answer = group.replies[read]
    assert isinstance(answer, NotFound) and answer.version == 2
    again = group.delete(3, KEY)
    group.run_until(lambda: group.answered(again))
    assert group.replies[again] == {"version": 3, "existed": False}
    for node_id in group.member_ids:
        group.run_until(lambda node_id=node_id: group.replica(node_id).keyspace.key_state(KEY).version == 3)
        assert group.replica(node_id).consensus_snapshot(KEY).chosen_version == 3
