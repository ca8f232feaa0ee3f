"""The proposer: write steps 1-6, the fast path, batching, recovery, R5-R7, R9.

A `Group` of three replicas runs with every message in one list; each test
holds, drops or crafts the messages that make its case.
"""

from __future__ import annotations

import cbor2
import crc32c
from replication_test_support import Group, between, none_of, not_, of_type

from kvsvr.core import model
from kvsvr.protocol.errors import ConditionFailed, Timeout
from kvsvr.replication.messages import (
    Accept,
    Accepted,
    Commit,
    Instance,
    Prepare,
    Promise,
    Read,
    ReadReply,
    StreamAck,
    StreamRecords,
)
from kvsvr.replication.replica import ReplicaOptions

KEY = b"k"
STREAM = of_type(StreamRecords, StreamAck)


def sent_since(group: Group, index: int, kind, source: int | None = None) -> list:
    return [
        message
        for message_source, _, message in group.sent[index:]
        if isinstance(message, kind) and (source is None or message_source == source)
    ]


def written(group: Group, node_id: int, value: bytes) -> int:
    """Write `value` through `node_id` and run until it is answered; its request id."""
    request_id = group.put(node_id, KEY, value)
    group.run_until(lambda: group.answered(request_id))
    return request_id


def test_fast_path_second_write_takes_one_round_trip():
    """The coordinator keeps its promise: the next write to the key is an Accept
    round only, and answers after one exchange with a majority."""
    group = Group()
    written(group, 1, b"a")
    group.run(1)  # the peers' first acks open the streams
    mark = len(group.sent)
    request_id = group.put(1, KEY, b"b")
    assert [type(m) for m in sent_since(group, mark, (Prepare, Accept))] == [Accept] * 3
    group.deliver(STREAM)  # the payload reaches the acceptors first
    group.deliver(of_type(Accept))
    group.deliver(of_type(Accepted))
    assert group.replies[request_id] == {"version": 2}
    assert not sent_since(group, mark, Prepare)
    # The coordinator counts each answered write by the path it took.
    assert group.replica(1).writes_decided == {"prepared": 1, "fast_path": 1}


def test_batching_merges_writes_arriving_while_an_instance_is_in_flight():
    """Writes queued behind an open instance go together into the next one."""
    group = Group()
    written(group, 1, b"a")
    first = group.put(1, KEY, b"b")
    mark = len(group.sent)
    later = [group.put(1, KEY, b"c%d" % index) for index in range(5)]
    assert not sent_since(group, mark, Accept), "the key has one instance in flight at a time"
    group.run_until(lambda: group.answered(first, *later))
    instances = {message.instance for message in sent_since(group, mark, Accept, source=1)}
    assert [instance.count for instance in instances] == [5]
    assert [group.replies[r]["version"] for r in (first, *later)] == [2, 3, 4, 5, 6, 7]


def test_recovery_reproposes_the_highest_accepted_value_unchanged():
    """A value accepted by some acceptor above the decided version is proposed
    again, unchanged, before anything new (write step 2)."""
    group = Group()
    group.put(1, KEY, b"orphan")
    group.deliver(not_(of_type(Accept)))
    group.take(of_type(Accept))
    [(_, _, orphan_accept)] = [e for e in group.sent if e[1] == 2 and isinstance(e[2], Accept)]
    group.step(1, 2, orphan_accept)  # only n2 accepts it (fetching the payload from n1)
    group.deliver(not_(between(2, 1, (Accepted,))))
    assert group.replica(2).consensus_snapshot(KEY).accepted.instance == orphan_accept.instance
    group.crash(1)  # before it learns anything
    mark = len(group.sent)
    newer = group.put(3, KEY, b"newer")
    group.run_until(lambda: group.answered(newer))
    first_accept = sent_since(group, mark, Accept, source=3)[0]
    assert first_accept.instance == orphan_accept.instance
    assert first_accept.ballot > orphan_accept.ballot
    assert group.replies[newer] == {"version": 2}
    read = group.get(2, KEY)
    group.run_until(lambda: group.answered(read))
    assert group.replies[read] == {"value": b"newer", "version": 2}


def test_r5_stale_promise_not_counted():
    """Promises for another ballot do not make a majority."""
    group = Group()
    group.put(1, KEY, b"x")
    [prepare] = {m for _, _, m in group.in_flight if isinstance(m, Prepare)}
    group.deliver(of_type(Prepare))
    held = group.take(of_type(Promise))
    mark = len(group.sent)
    stale_ballot = (*prepare.ballot[:2], 2)  # another proposer's ballot, not ours
    for source in (2, 3):
        group.step(source, 1, Promise(KEY, stale_ballot, True, stale_ballot, None, None, None))
    assert not sent_since(group, mark, Accept)
    for envelope in held:
        group.step(*envelope)
    assert sent_since(group, mark, Accept)


def test_r5_accepted_for_another_ref_not_counted():
    """Accepted replies count only if they name the same (ballot, version, ref)."""
    group = Group()
    request_id = group.put(1, KEY, b"x")
    group.deliver(not_(of_type(Accept, Accepted)))
    accepts = group.take(of_type(Accept))
    accept = accepts[0][2]
    other_ref = (2, 1, 77, crc32c.crc32c(cbor2.dumps([["put", b"y"]])))
    for source in (2, 3):
        group.step(
            source,
            1,
            Accepted(KEY, accept.ballot, Instance(1, 1, other_ref), "accepted", accept.ballot, None),
        )
    assert not group.answered(request_id)
    for envelope in accepts:
        group.step(*envelope)
    group.deliver()
    assert group.replies[request_id] == {"version": 1}


def test_r6_rejected_round_backs_off_and_next_round_exceeds_highest_seen():
    """A rejection carries the promise; the next round is above it, after a
    random wait of at least one tick."""
    waits = set()
    for seed in range(8):
        group = Group(seed=seed)
        for node_id in (2, 3):
            group.step(3, node_id, Prepare(KEY, (5, 1, 3)))
        group.in_flight.clear()
        group.put(1, KEY, b"x")
        group.deliver(not_(between(1, 1)))  # n1's own promise is left in flight
        rounds = sorted({m.ballot[0] for _, _, m in group.sent if isinstance(m, Prepare) and m.ballot[2] == 1})
        assert rounds == [1]
        for tick in range(1, 200):
            group.tick(nodes=(1,))
            later = [m for s, _, m in group.in_flight if s == 1 and isinstance(m, Prepare) and m.ballot[0] > 1]
            if later:
                assert later[0].ballot[0] == 6
                waits.add(tick)
                break
        else:
            raise AssertionError("no second round")
    assert min(waits) >= 1 and len(waits) > 1, f"the backoff is randomised: {waits}"


def test_r7_failed_cas_answered_only_after_quorum_confirms():
    """A condition that fails on the coordinator's state is answered only once
    a majority read confirmed that state is still the newest."""
    group = Group()
    written(group, 1, b"a")
    group.deliver()
    cas = group.put(1, KEY, b"new", model.Condition(None, b"not-a"))
    assert not group.answered(cas)
    reads = [m for s, _, m in group.in_flight if isinstance(m, Read) and s == 1]
    assert len(reads) == 3
    group.deliver(between(1, 1))  # n1's own read and reply: one of three
    assert not group.answered(cas)
    group.deliver(between(1, 2))
    group.deliver(between(2, 1, (ReadReply,)))
    answer = group.replies[cas]
    assert isinstance(answer, ConditionFailed) and answer.version == 1


def test_r7_failed_cas_behind_a_batch_not_yet_chosen_waits_for_the_batch():
    """A condition that fails on the state a pending batch would make is
    decided only after that batch is chosen (and then confirmed)."""
    group = Group()
    written(group, 1, b"a")
    group.deliver()
    to_coordinator = between(None, 1, (Accepted,))
    in_flight = group.put(1, KEY, b"b")
    group.deliver(not_(to_coordinator))
    passes = group.put(1, KEY, b"c", model.Condition(None, b"b"))
    fails = group.put(1, KEY, b"d", model.Condition(None, b"b"))  # after c, it fails
    mark = len(group.sent)
    group.deliver(to_coordinator)  # "b" is chosen; the next batch is ["c"] alone
    assert group.answered(in_flight) and not group.answered(passes, fails)
    assert [m.instance.count for m in sent_since(group, mark, Accept, source=1)] == [1] * 3
    group.deliver(not_(of_type(Read)))
    assert group.replies[passes] == {"version": 3}
    assert not group.answered(fails), "checked against v3, confirmed by a read first"
    group.run_until(lambda: group.answered(fails))
    assert isinstance(group.replies[fails], ConditionFailed)
    assert group.replies[fails].version == 3


def test_r9_write_requeued_only_after_other_ref_decided():
    """A write whose Accept left stays attached to its ref; when another ref is
    decided at its version, it goes again at a later version."""
    group = Group()
    written(group, 1, b"a")
    group.deliver()
    mine = group.put(1, KEY, b"mine")
    lost = group.take(of_type(Accept))  # n1's Accept at v2 reaches no one
    assert {m.instance.first_version for _, _, m in lost} == {2}
    theirs = group.put(2, KEY, b"theirs")
    mark = len(group.sent)
    group.run_until(lambda: group.answered(theirs, mine))
    assert group.replies[theirs] == {"version": 2}
    assert group.replies[mine] == {"version": 3}
    [mine_ref] = {m.instance.ref for _, _, m in lost}
    later = [m for m in sent_since(group, mark, Accept, source=1) if m.instance.first_version == 3]
    assert later, "n1 proposed its write again at v3"
    for accept in later:
        # the Accept at v3 carries the decision at v2 it follows: another ref
        assert accept.previous.first_version == 2 and accept.previous.ref != mine_ref


def test_r9_timeout_after_the_accept_left_is_indeterminate():
    options = ReplicaOptions(client_timeout_ticks=40)
    group = Group(options=options)
    request_id = group.put(1, KEY, b"x")
    group.run_until(lambda: group.answered(request_id), matches=not_(of_type(Accepted)))
    answer = group.replies[request_id]
    assert isinstance(answer, Timeout) and answer.indeterminate


def test_r9_already_chosen_teaches_the_proposer_its_own_decided_write():
    """The coordinator's value was chosen but it heard no Accepted, Commit or
    stream: the already_chosen answer names what won its version, so the
    client hears success rather than "unknown"."""
    group = Group()
    mine = group.put(1, KEY, b"mine")
    group.deliver(none_of(of_type(Accepted), STREAM))
    group.take(of_type(Accepted))
    # n2 recovers n1's value at v1 and writes on at v2; n1 hears none of it.
    theirs = group.put(2, KEY, b"theirs")
    to_n1 = between(None, 1)
    group.run_until(lambda: group.answered(theirs), matches=not_(to_n1))
    group.take(to_n1)
    assert group.replies[theirs] == {"version": 2}
    group.run_until(lambda: group.answered(mine), matches=none_of(STREAM, of_type(Commit)))
    assert group.replies[mine] == {"version": 1}


def test_r9_second_proposal_at_a_version_keeps_the_first_batch_answerable():
    """A coordinator whose first Accept at v reached no one prepares again;
    the new majority holds no vote at v, so it proposes the same batch again
    there, unchanged, and the writes queued behind it follow at v+1. Both
    are answered, once each."""
    options = ReplicaOptions(client_timeout_ticks=300)
    group = Group(options=options)
    first = group.put(1, KEY, b"first")
    group.deliver(of_type(Prepare, Promise))

    def is_first_accept(source, destination, message):
        return isinstance(message, Accept) and message.instance.first_version == 1 and (
            message.ballot[0] == 1
        )

    group.take(is_first_accept)
    second = group.put(1, KEY, b"second")
    group.run_until(lambda: group.answered(first, second), matches=not_(is_first_accept))
    assert group.replies[first] == {"version": 1}
    assert group.replies[second] == {"version": 2}
    reproposed = [m for _, _, m in group.sent if isinstance(m, Accept) and m.instance.first_version == 1]
    assert len({m.instance.ref for m in reproposed}) == 1  # the same batch, under a new ballot
    assert len({m.ballot for m in reproposed}) == 2
