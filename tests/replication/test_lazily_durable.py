"""Which writes a step must sync before its late messages, and which it need not.

A vote or a promise is synced before anything that reveals it leaves. A
learned decision, the applied state it produces, a stored payload and a
stream cursor are lazily durable: written at once, made durable by the
next sync anyone asks for, and vouched for by nothing the step sends
(docs/replication.md, "Lazily durable"). A stream ack names a cursor, so
the step that sends one asks for a sync.
"""

from __future__ import annotations

import dataclasses
import random

import cbor2
import crc32c
from replication_test_support import AT_ONCE, Group

from kvsvr.core import model
from kvsvr.replication.messages import (
    LOG_START,
    Accept,
    AcceptOutcome,
    Commit,
    Instance,
    PayloadRecord,
    PayloadReply,
    StreamAck,
    StreamRecords,
)
from kvsvr.replication.replica import Replica, ReplicaOptions
from kvsvr.storage import MemoryStorage

KEY = b"k"
PAYLOAD = cbor2.dumps([["put", b"v1"]])
REF = (1, 1, 1, crc32c.crc32c(PAYLOAD))  # origin n1, incarnation 1, seq 1
INSTANCE = Instance(first_version=1, count=1, ref=REF)


def lone_acceptor(options: ReplicaOptions = AT_ONCE) -> tuple[Replica, MemoryStorage]:
    """n2 of (1, 2, 3), started and synced; the test plays n1."""
    storage = MemoryStorage()
    replica = Replica(2, (1, 2, 3), storage, random.Random(0), options)
    replica.start()
    storage.sync()
    return replica, storage


def test_a_vote_asks_for_a_sync_and_a_payload_or_a_learned_decision_does_not():
    replica, storage = lone_acceptor()
    stored = replica.step(1, PayloadReply(REF, KEY, PAYLOAD))
    assert not stored.sync and storage.unsynced_batch_count == 1

    vote = replica.step(1, Accept(KEY, (1, 1, 1), INSTANCE, None))
    assert [m.outcome for _, m in vote.messages] == [AcceptOutcome.ACCEPTED]
    assert vote.sync, "an Accepted vouches for a vote (and the payload): its step syncs first"
    storage.sync()

    learned = replica.step(1, Commit(KEY, INSTANCE))
    assert not learned.sync, "learning a decision asks for no sync"
    assert storage.unsynced_batch_count == 1
    assert replica.keyspace.key_state(KEY) == model.KeyState(1, "kv", b"v1")  # applied at once


def test_a_stream_ack_asks_for_a_sync_of_the_cursor_it_names():
    options = dataclasses.replace(AT_ONCE, stream_ack_records_max=AT_ONCE.stream_window_records // 2)
    replica, storage = lone_acceptor(options)
    position = (1, 1)
    records = StreamRecords(LOG_START, ((position, PayloadRecord(REF, KEY, PAYLOAD)),))
    stored = replica.step(1, records)
    assert not stored.sync and not [m for _, m in stored.messages if isinstance(m, StreamAck)]
    assert storage.unsynced_batch_count == 1  # the payload and the cursor, lazily

    for _tick in range(options.stream_ack_interval_ticks + 1):
        effects = replica.tick()
        acks = [m for _, m in effects.messages if isinstance(m, StreamAck) and m.position == position]
        if acks:
            break
    assert acks, "no ack within the ack interval"
    assert effects.sync, "the step that acks syncs the cursor first"


def test_decisions_lost_by_every_member_in_a_crash_are_learned_again():
    group = Group()
    request = group.put(1, KEY, b"v1")
    group.deliver(lambda source, destination, message: not isinstance(message, Commit))
    assert group.replies[request] == {"version": 1}
    group.deliver()  # the Commits: every member learns v1, lazily

    for node in group.member_ids:
        group.crash(node)  # every unsynced write is gone
    for node in group.member_ids:
        group.start(node)
        consensus = group.replica(node).consensus_snapshot(KEY)
        assert consensus.chosen_version == 0 and consensus.accepted.instance.ref[2] == 1, (
            "the decision is lost, the synced vote kept"
        )
    for node in group.member_ids:  # a read through each member settles the votes there
        read = group.get(node, KEY)
        group.run_until(lambda read=read: group.answered(read))
        assert group.replies[read] == {"version": 1, "value": b"v1"}
        assert group.replica(node).keyspace.key_state(KEY) == model.KeyState(1, "kv", b"v1")
