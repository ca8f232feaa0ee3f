"""Catch-up, the log stream, trimming (R11), state transfer (R12), invariant 5.

A replica that falls behind pulls what it lacks; an origin trims its log
below every peer's ack, or past a lagging peer that it then hands to state
transfer; installing a state never weakens what the acceptor promised.
"""

from __future__ import annotations

import cbor2
import crc32c
from replication_test_support import Group, between, none_of, not_, of_type

from kvsvr.replication import durable, events
from kvsvr.replication.messages import (
    Accept,
    Accepted,
    Commit,
    DecisionsReply,
    FetchDecisions,
    FetchPayload,
    FetchState,
    Instance,
    PayloadRecord,
    Prepare,
    Promise,
    StateReply,
    StreamAck,
    StreamRecords,
    StreamTrimmed,
    Vote,
)
from kvsvr.replication.replica import ReplicaOptions

KEY = b"k"
STREAM = of_type(StreamRecords, StreamAck, StreamTrimmed)


def write_all(group: Group, node_id: int, values, key: bytes = KEY, matches=None) -> list[int]:
    request_ids = []
    for value in values:
        request_id = group.put(node_id, key, value)
        group.run_until(lambda request_id=request_id: group.answered(request_id), matches=matches)
        request_ids.append(request_id)
    return request_ids


def log_positions(group: Group, node_id: int) -> list:
    return [
        durable.position_from_key(stored_key)
        for stored_key, _ in group.storages[node_id].scan("log", b"", None, 1 << 30)
    ]


def test_stream_acks_only_after_the_records_and_cursor_are_written():
    """A receiver's ack leaves in the same effects as the writes it covers,
    which ask for a sync first; the ack names the last record stored."""
    group = Group()
    group.run(1)
    write_all(group, 1, [b"a", b"b"], matches=none_of(STREAM))
    batches = group.take(between(1, 2, (StreamRecords,)))
    assert batches
    for source, _, message in batches:
        effects = group.replica(2).step(source, message)
        acks = [m for _, m in effects.messages if isinstance(m, StreamAck)]
        assert effects.sync and acks
        assert acks[-1].position == message.records[-1][0]
        group.storages[2].sync()


def test_stream_resumes_from_the_durable_cursor_after_a_restart():
    group = Group()
    group.run(1)
    write_all(group, 1, [b"a", b"b"])
    group.run(30)
    cursor = group.replica(2).log_stream._cursors[1]
    group.crash(2)
    write_all(group, 1, [b"c", b"d"], matches=none_of(between(None, 2)))
    group.start(2)
    assert group.replica(2).log_stream._cursors[1] == cursor  # resumes where it was, not from the start
    group.run_until(lambda: group.replica(2).keyspace.key_state(KEY).version == 4)
    assert group.replica(2).log_stream._cursors[1] > cursor
    first_batch_after = next(
        m for s, d, m in group.sent if (s, d) == (1, 2) and isinstance(m, StreamRecords)
        and m.records[0][0] > cursor
    )
    assert first_batch_after.after >= cursor


def test_invariant_5_corrupt_stream_payload_is_neither_stored_nor_acked():
    group = Group()
    group.run(1)
    payload = cbor2.dumps([["put", b"x"]])
    ref = (1, 1, 7, crc32c.crc32c(payload))
    tampered = PayloadRecord(ref, KEY, cbor2.dumps([["put", b"y"]]))
    cursor = group.replica(2).log_stream._cursors.get(1, (0, 0))
    effects = group.step(1, 2, StreamRecords(cursor, (((1, 7), tampered),)))
    [ack] = [m for _, m in effects.messages if isinstance(m, StreamAck)]
    assert ack.position == cursor  # not past the corrupt record
    assert group.replica(2).payloads.payload(ref) is None
    assert events.CorruptPayload(2, ref) in group.events


def test_catch_up_pulls_a_decision_that_exists_in_no_stream():
    """The coordinator crashed after a majority accepted but before it logged
    or sent the decision: a read pulls it from the acceptors' votes."""
    group = Group()
    group.run(1)
    request_id = group.put(1, KEY, b"x")
    replica = group.replica(1)
    to_coordinator = between(None, 1, (Accepted,))
    group.deliver(none_of(to_coordinator, STREAM))  # every acceptor votes
    for source, _, message in group.take(to_coordinator):
        replica.step(source, message)  # the decision: its effects never synced nor sent
    group.crash(1)  # the Decision record and the Commits are lost
    assert not any(isinstance(m, Commit) for _, _, m in group.sent)
    assert not group.answered(request_id)
    read = group.get(2, KEY)
    group.run_until(lambda: group.answered(read), matches=none_of(between(None, 1)))
    assert group.replies[read] == {"value": b"x", "version": 1}


def test_payload_no_peer_holds_falls_back_to_state_transfer():
    """Payloads are collected once applied and unpinned; a replica that learns
    an old decision late gets the state instead."""
    options = ReplicaOptions(payload_keep_ticks=4, log_retained_records_max=1)
    group = Group(options=options)
    cut_off = between(None, 3)
    write_all(group, 1, [b"a", b"b", b"c"], matches=none_of(cut_off))
    group.run(40, matches=none_of(cut_off))  # trimmed and collected everywhere
    group.take(cut_off)
    first = group.replica(1).consensus_snapshot(KEY).recent[0]
    assert first.first_version == 1
    for node_id in (1, 2):
        assert group.replica(node_id).payloads.payload_entry(first.ref) is None
    group.step(1, 3, Commit(KEY, first))  # n3 learns v1, long after
    group.run_until(lambda: group.replica(3).keyspace.key_state(KEY).version == 3)
    assert any(isinstance(m, FetchState) for s, _, m in group.sent if s == 3)
    assert events.StateInstalled(3, KEY, 3) in group.events


def test_r11_origin_trims_only_below_every_peers_durable_ack():
    group = Group()
    group.run(1)
    write_all(group, 1, [b"a", b"b", b"c"], matches=none_of(between(1, 3, (StreamRecords,))))
    group.take(between(1, 3, (StreamRecords,)))
    group.run(5, matches=none_of(between(1, 3, (StreamRecords,))))
    acked_by_3 = group.replica(1).log_stream._streams[3].acked
    positions = log_positions(group, 1)
    assert positions and all(position > acked_by_3 for position in positions)
    assert group.replica(1).log_stream._streams[2].acked == positions[-1]  # n2 holds everything
    group.run(60)  # n3 catches up: the log empties
    assert log_positions(group, 1) == []
    assert group.replica(1).log_stream._streams[3].acked == group.replica(1).log_stream._log_trimmed_through


def test_r11_pinned_payloads_survive_trimming():
    """The payload of an accepted vote (or a pending decision) is copied out
    of the log record before the record is trimmed."""
    options = ReplicaOptions(log_retained_records_max=0)
    group = Group(options=options)
    group.put(1, KEY, b"open")
    group.deliver(of_type(Prepare, Promise))
    [(_, _, accept)] = [e for e in group.in_flight if e[1] == 1 and isinstance(e[2], Accept)]
    group.deliver(between(1, 1))  # n1's own vote only: the instance stays open
    group.in_flight.clear()
    group.tick(nodes=(1,))
    ref = accept.instance.ref
    assert log_positions(group, 1) == []  # trimmed, every record
    assert group.replica(1).consensus_snapshot(KEY).accepted == Vote(accept.ballot, accept.instance)
    assert group.storages[1].get("payloads", durable.ref_key(ref)) is not None
    assert group.replica(1).payloads.payload(ref) == cbor2.dumps([["put", b"open"]])


def test_r11_peer_behind_the_trimmed_log_is_handed_to_state_transfer():
    """Past its retention the origin trims records n3 never acked; n3 hears
    StreamTrimmed, moves its cursor, walks n1's decided keys and catches up."""
    options = ReplicaOptions(log_retained_records_max=2, walk_page_keys_max=1)
    group = Group(options=options)
    group.run(1)
    down = between(None, 3)
    keys = [b"k%d" % index for index in range(4)]
    for key in keys:
        write_all(group, 1, [b"x-" + key, b"y-" + key], key=key, matches=none_of(down))
    group.run(3, matches=none_of(down))
    group.take(down)
    trimmed = group.replica(1).log_stream._log_trimmed_through
    assert trimmed > group.replica(1).log_stream._streams[3].acked
    group.run_until(
        lambda: all(group.replica(3).keyspace.key_state(key).version == 2 for key in keys),
        ticks_max=600,
    )
    assert any(isinstance(m, StreamTrimmed) for s, d, m in group.sent if (s, d) == (1, 3))
    walk_pages = [m for s, d, m in group.sent if (s, d) == (3, 1) and isinstance(m, FetchDecisions)]
    assert len({m.start_key for m in walk_pages}) >= len(keys)  # one key per page
    assert group.replica(3).log_stream._cursors[1] >= trimmed
    assert not group.replica(3).catch_up._walks
    for key in keys:
        assert group.replica(3).keyspace.key_state(key).value == b"y-" + key


def test_r11_walk_resumes_after_a_restart():
    options = ReplicaOptions(log_retained_records_max=1, walk_page_keys_max=1)
    group = Group(options=options)
    group.run(1)
    down = between(None, 3)
    keys = [b"k%d" % index for index in range(3)]
    for key in keys:
        write_all(group, 1, [key], key=key, matches=none_of(down))
    group.run(3, matches=none_of(down))
    group.take(down)
    group.run_until(lambda: bool(group.replica(3).catch_up._walks), matches=none_of(of_type(DecisionsReply)))
    walk = dict(group.replica(3).catch_up._walks)
    group.crash(3)
    group.start(3)
    assert group.replica(3).catch_up._walks == walk  # durable, with the cursor it moved
    group.run_until(
        lambda: all(group.replica(3).keyspace.key_state(key).version == 1 for key in keys)
        and not group.replica(3).catch_up._walks,
    )


def test_r12_state_transfer_never_lowers_promise_or_drops_accepted():
    group = Group()
    cut_off = between(None, 3)
    write_all(group, 1, [b"a", b"b", b"c"], matches=none_of(cut_off))
    group.take(cut_off)
    replica = group.replica(3)
    # n3 promised a high ballot and holds a vote above what it will install.
    high = (50, 9, 2)
    group.step(2, 3, Prepare(KEY, high))
    payload = cbor2.dumps([["put", b"later"]])
    ref = (2, 9, 1, crc32c.crc32c(payload))
    replica.payloads.store_payload(ref, KEY, payload)
    vote = Vote(high, Instance(4, 1, ref))
    replica.consensus_snapshot(KEY).accepted = vote
    group.in_flight.clear()
    chosen = group.replica(1).consensus_snapshot(KEY).chosen
    group.step(1, 3, StateReply(KEY, 3, [3, "kv", b"c"], None, chosen))
    consensus = replica.consensus_snapshot(KEY)
    assert replica.keyspace.key_state(KEY).version == 3
    assert consensus.promised == high and consensus.accepted == vote
    assert consensus.chosen_version == 3 and consensus.pending == {}
    # An older state never lowers what is applied.
    group.step(2, 3, StateReply(KEY, 1, [2, "kv", b"b"], None, None))
    assert replica.keyspace.key_state(KEY).version == 3


def test_r12_table_state_transfer_comes_in_pages_installed_together():
    options = ReplicaOptions(state_transfer_page_rows_max=2, payload_keep_ticks=2, log_retained_records_max=0)
    group = Group(options=options)
    cut_off = between(None, 3)
    for index in range(7):
        request_id = group.append(1, KEY, b"row%d" % index)
        group.run_until(lambda request_id=request_id: group.answered(request_id), matches=none_of(cut_off))
    group.take(cut_off)
    group.run(20, matches=none_of(cut_off))
    group.take(cut_off)
    group.step(3, 1, FetchState(KEY, 7))
    replies = group.take(between(1, 3, (StateReply,)))
    assert [m.page for _, _, m in replies] == [0, 1, 2, 3] and {m.pages for _, _, m in replies} == {4}
    assert all(len(m.rows) <= 2 for _, _, m in replies)
    for envelope in reversed(replies[1:]):
        group.step(*envelope)
        assert group.replica(3).keyspace.key_state(KEY).version == 0  # not before every page
    group.step(*replies[0])
    assert group.replica(3).keyspace.key_state(KEY).version == 7
    read = group.sync_table(3, KEY)
    group.run_until(lambda: group.answered(read))
    assert [row[2] for row in group.replies[read]["rows"]] == [b"row%d" % i for i in range(7)]


def test_fetch_payload_asks_the_origin_first_then_the_others():
    group = Group()
    group.put(1, KEY, b"x")
    group.deliver(none_of(between(1, 3, (Accept,)), STREAM, of_type(Commit)))
    [(_, _, accept)] = group.take(between(1, 3, (Accept,)))
    group.crash(1)
    group.step(1, 3, accept)
    fetches = [(d, m) for s, d, m in group.in_flight if s == 3 and isinstance(m, FetchPayload)]
    assert [d for d, _ in fetches] == [1]
    group.deliver()  # n1 is down: no answer
    group.tick(ReplicaOptions().fetch_retry_ticks, nodes=(3,))
    group.step(1, 3, accept)  # the Accept again (a resend, or a recovery's)
    assert [d for s, d, m in group.in_flight if s == 3 and isinstance(m, FetchPayload)] == [2]
    group.deliver()
    assert group.replica(3).consensus_snapshot(KEY).accepted.instance == accept.instance


def test_when_the_shell_pumps_a_burst_of_writes_streams_as_one_batch():
    """With `stream_pump_each_step` off (the node shell's mode) steps send no
    log records; one pump sends each peer everything the burst appended."""
    group = Group(options=ReplicaOptions(stream_pump_each_step=False))
    group.run(1)  # the peers' first acks open the streams
    mark = len(group.sent)
    for index in range(3):
        group.put(1, b"k%d" % index, b"v")
    group.deliver(of_type(Prepare, Promise))  # promises won: the payloads go in the log
    assert len(log_positions(group, 1)) == 3
    assert not [m for _, _, m in group.sent[mark:] if isinstance(m, StreamRecords)]
    effects = group.replica(1).pump_streams()
    batches = {d: m for d, m in effects.messages if isinstance(m, StreamRecords)}
    assert sorted(batches) == [2, 3]
    for message in batches.values():
        assert [type(record) for _, record in message.records] == [PayloadRecord] * 3


def test_stream_reads_records_older_than_the_cached_tail_from_the_log():
    """A peer far behind is sent records the in-memory tail no longer holds."""
    group = Group(options=ReplicaOptions(log_tail_cached_records_max=1))
    group.run(1)
    down = between(None, 3)
    write_all(group, 1, [b"a", b"b", b"c", b"d"], matches=none_of(down))
    group.take(down)
    group.run_until(lambda: group.replica(3).keyspace.key_state(KEY).version == 4)
    assert group.replica(3).keyspace.key_state(KEY).value == b"d"


def test_stream_batches_are_bounded_in_bytes_so_every_one_fits_a_frame():
    """A peer that fell behind on large values is resent its backlog in
    batches bounded in bytes as well as records: each StreamRecords fits the
    frame its receiver accepts (16 values of 700 KiB used to go out as frames
    of up to 7.2 MB against the 4 MiB limit, refused again and again)."""
    from kvsvr.protocol.limits import DEFAULT_LIMITS
    from kvsvr.replication.codec import encode_message

    group = Group()
    behind = between(None, 3)
    value = b"x" * (700 * 1024)
    for index in range(16):
        request_id = group.put(1, b"big%d" % index, value)
        group.run_until(lambda request_id=request_id: group.answered(request_id),
                        matches=not_(behind))
    group.take(behind)
    mark = len(group.sent)
    group.run_until(
        lambda: all(group.replica(3).keyspace.key_state(b"big%d" % index).version == 1
                    for index in range(16))
    )
    batches = [message for source, destination, message in group.sent[mark:]
               if destination == 3 and isinstance(message, StreamRecords) and message.records]
    assert batches
    sizes = [len(encode_message(batch)) for batch in batches]
    assert max(sizes) <= DEFAULT_LIMITS.frame_size_max_bytes, sizes
    assert any(len(batch.records) > 1 for batch in batches)  # small records still share one


def test_limits_that_cannot_fit_a_frame_are_refused_at_start():
    import random

    import pytest

    from kvsvr.protocol.limits import Limits
    from kvsvr.replication.replica import Replica, ReplicaOptions
    from kvsvr.storage import MemoryStorage

    limits = Limits(value_size_max_bytes=1024 * 1024, frame_size_max_bytes=1024 * 1024 + 8192)
    with pytest.raises(ValueError, match="does not fit a peer frame"):
        Replica(1, (1, 2, 3), MemoryStorage(), random.Random(0), ReplicaOptions(), limits)
