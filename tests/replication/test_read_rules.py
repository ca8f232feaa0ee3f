"""Linearizable reads: a majority's decided version, open instances settled, R10.

A read asks every member for its decided and accepted state; on a majority
it takes the highest decided version c, settles an instance accepted above
c, and answers from the local state once it has applied the result.
"""

from __future__ import annotations

import dataclasses

from replication_test_support import AT_ONCE, Group, between, none_of, not_, of_type

from kvsvr.replication.messages import (
    Accept,
    Accepted,
    Commit,
    Read,
    ReadReply,
    StreamAck,
    StreamRecords,
)

KEY = b"k"
STREAM = of_type(StreamRecords, StreamAck)


def test_r10_read_returns_the_state_a_majority_of_identical_votes_decided():
    """A value a majority accepted is decided though nobody was told: the read
    returns the state at c+1, not at c."""
    group = Group()
    first = group.put(1, KEY, b"a")
    group.run_until(lambda: group.answered(first))
    group.deliver()
    second = group.put(1, KEY, b"b")
    group.deliver(none_of(between(None, 1, (Accepted,)), of_type(Commit)))
    group.take(between(None, 1, (Accepted,)))
    group.crash(1)  # the coordinator never learns; nobody hears a Commit
    for node_id in (2, 3):
        consensus = group.replica(node_id).consensus_snapshot(KEY)
        assert consensus.chosen_version == 1 and consensus.accepted.instance.first_version == 2
    read = group.get(3, KEY)
    group.run_until(lambda: group.answered(read), matches=not_(STREAM))
    assert group.replies[read] == {"value": b"b", "version": 2}
    assert not group.answered(second)


def test_r10_read_waits_until_the_local_replica_applied_the_decided_version():
    """A replica that missed decisions answers only after it caught up."""
    group = Group()
    isolated = between(None, 3)
    for index in range(3):
        request_id = group.put(1, KEY, b"v%d" % index)
        group.run_until(lambda request_id=request_id: group.answered(request_id), matches=not_(isolated))
    group.take(isolated)
    assert group.replica(3).keyspace.key_state(KEY).version == 0
    read = group.get(3, KEY)
    group.run_until(lambda: group.answered(read))
    assert group.replies[read] == {"value": b"v2", "version": 3}
    assert group.replica(3).keyspace.key_state(KEY).version == 3


def test_r10_read_with_an_instance_in_flight_recovers_it_rather_than_burn_a_version():
    """Votes above c that are not a majority: retry, then run recovery, which
    re-proposes that value (never a no-op)."""
    options = dataclasses.replace(AT_ONCE, read_retries_before_recovery=1)
    group = Group(options=options)
    group.put(1, KEY, b"open")
    group.deliver(not_(of_type(Accept)))
    [(_, _, accept)] = [e for e in group.in_flight if e[1] == 2 and isinstance(e[2], Accept)]
    group.take(of_type(Accept))
    group.step(1, 2, accept)  # n2 alone accepts
    group.deliver(not_(between(2, 1, (Accepted,))))
    group.take(between(2, 1, (Accepted,)))
    group.crash(1)
    read = group.get(3, KEY)
    group.run_until(lambda: group.answered(read))
    assert group.replies[read] == {"value": b"open", "version": 1}
    assert group.replica(3).consensus_snapshot(KEY).chosen.ref == accept.instance.ref


def test_read_needs_a_majority_of_replies():
    group = Group()
    request_id = group.put(1, KEY, b"a")
    group.run_until(lambda: group.answered(request_id))
    group.deliver()
    group.crash(2)
    group.crash(3)
    read = group.get(1, KEY)
    group.run(30)
    assert not group.answered(read)
    assert sum(1 for _, _, m in group.sent if isinstance(m, Read)) > 3  # it kept asking


def test_a_read_reply_to_an_earlier_incarnation_is_not_counted_for_a_new_read():
    """Read ids restart with the node, and a peer link delivers frames queued
    while the node was down: replies addressed to the previous incarnation's
    read must not answer the new incarnation's read (R1). Without binding a
    reply to the exact read it answers, n3 answers v1 after v2 was
    acknowledged."""
    group = Group()
    first = group.put(1, KEY, b"v1")
    group.run_until(lambda: group.answered(first))
    group.deliver()
    read_before_crash = group.get(3, KEY)
    group.deliver(of_type(Read))
    stale_replies = group.take(between(None, 3, (ReadReply,)))
    assert len(stale_replies) == 3 and not group.answered(read_before_crash)
    group.crash(3)
    second = group.put(1, KEY, b"v2")
    group.run_until(lambda: group.answered(second), matches=not_(between(None, 3)))
    assert group.replies[second] == {"version": 2}
    group.take(between(None, 3))
    group.start(3)
    read = group.get(3, KEY)
    group.in_flight[:0] = stale_replies  # queued before the crash, delivered first
    group.run_until(lambda: group.answered(read))
    assert group.replies[read] == {"value": b"v2", "version": 2}
