"""The replication log and its stream (docs/protocol-rules.md, "Two channels", channel 1).

Theory of operation. Every node appends what it originates to its own
durable log, keyed by position (incarnation, seq): `PayloadRecord(ref,
key, payload)` when it proposes a batch, `DecisionRecord(key, instance)`
when it decides one. The incarnation in the position (R1) means a
restarted node's records sort after everything it wrote before, and a
position lost with an unsynced tail is never reused.

Sending. For each peer the origin remembers the peer's acknowledged
position (unknown until the peer acks after our start) and what it has
sent beyond it. `pump_streams`, run at the end of every step (or when the shell asks), sends the
records after what was sent, in batches of `stream_batch_records_max`
records and `stream_batch_max_bytes` (a larger record goes alone), while no more than `stream_window_records` are unacknowledged. If the ack
does not move for `stream_retransmit_ticks`, sending starts again from the
ack (records or acks were lost).

Receiving. A batch says which position it follows; a receiver whose cursor
is below that missed records and acks its cursor instead, so the origin
goes back. Otherwise it stores each record past its cursor idempotently
(payloads checked against their crc32c; a corrupt one stops the batch
there, unacked: invariant 5), writes the cursor after them (a crash keeps
a prefix of the writes, so a surviving cursor means surviving records),
and acks the cursor: at once when `stream_ack_records_max` records from
that origin are unacked, otherwise at its next tick, so a busy stream
costs one ack per tick or per that many records, not one per batch. The
records and the cursor are lazily durable (core._write); the step that
acks asks for a sync, and the ack is a late message, so acks are
cumulative and only ever name synced records. Every
`stream_ack_interval_ticks` a receiver acks each origin anyway: that is how
a restarted origin learns where each peer stands.

Trimming (R11). Once every peer has acknowledged a position, every peer
durably holds the records up to it, and the origin deletes them (at most
`log_trim_batch_records_max` per tick). A peer that stays behind (down,
partitioned) would make the log grow without bound, so past
`log_retained_records_max` records the origin trims anyway and hands that
peer to state transfer: when the records a peer needs next are gone, the
origin sends `StreamTrimmed(trim point)` instead. The peer moves its cursor
to the trim point (durably, before anything else) and walks the origin's
decided keys to learn the decisions it missed (catch_up.py). Payloads
pinned on the origin (payloads.py) are copied out of a record before it is
trimmed, so they survive it. The trim point is durable, so a restarted
origin still answers StreamTrimmed.

The stream is an optimisation and a bulk path, never the only one: a
decision may exist in no stream (its coordinator crashed before logging
it), so catch-up pulls what is missing (catch_up.py).

Calls into other parts (its `USES`; the replica connects exactly these):
acceptor: `learn_decision`, `on_payload_stored`; catch_up: `continue_walk`,
`start_walk`; payloads: `payload_pinned`, `store_payload`.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import TYPE_CHECKING

from kvsvr.replication import durable, events
from kvsvr.replication.core import Part, ReplicaCore, decode_value, encode_value
from kvsvr.replication.messages import (
    LOG_START,
    DecisionRecord,
    LogPosition,
    LogRecord,
    PayloadRecord,
    StreamAck,
    StreamRecords,
    StreamTrimmed,
)
from kvsvr.storage import Family

if TYPE_CHECKING:
    from kvsvr.replication.acceptor import Acceptor
    from kvsvr.replication.catch_up import CatchUp
    from kvsvr.replication.payloads import PayloadStore


@dataclasses.dataclass
class StreamOut:
    acked: LogPosition | None = None  # unknown until the peer acks
    sent: LogPosition = LOG_START
    last_progress_tick: int = 0


class LogStream(Part):
    USES = (Family.ACCEPTOR, "catch_up", "payloads")
    acceptor: Acceptor
    catch_up: CatchUp
    payloads: PayloadStore

    def __init__(self, core: ReplicaCore) -> None:
        super().__init__(core)
        self._log_next_seq = 1
        self._log_last: LogPosition = LOG_START
        self._log_trimmed_through: LogPosition = LOG_START
        self._log_record_count = 0
        self._streams = {peer: StreamOut() for peer in self.peers}
        self._cursors: dict[int, LogPosition] = {}  # origin -> position held up to
        self._last_ack_tick: dict[int, int] = {}
        # origin -> records stored from it since the last ack we sent it
        self._unacked_records: dict[int, int] = {}
        # The newest log records, in position order: every record after
        # `_log_tail_after` is here (the stream reads them without a scan).
        # Between log_tail_cached_records_max and twice that many are kept.
        self._log_tail_positions: list[LogPosition] = []
        self._log_tail_records: list[LogRecord] = []
        self._log_tail_after: LogPosition = LOG_START

    def load_log_state(self) -> None:
        """At start: find the log's tail, its trim point and the cursors of every origin."""
        stored_trim_point = self.storage.get(Family.META, durable.LOG_TRIMMED_KEY)
        if stored_trim_point is not None:
            self._log_trimmed_through = tuple(
                decode_value(Family.META, stored_trim_point, durable.LOG_TRIMMED_KEY)
            )
            self._log_last = self._log_trimmed_through
        # The log holds at most about log_retained_records_max records.
        records = self.storage.scan(Family.LOG, b"", None, 1 << 62)
        self._log_record_count = len(records)
        if records:
            self._log_last = durable.position_from_key(records[-1][0])
        self._log_tail_after = self._log_last  # nothing cached yet: all of it is in storage
        for origin_stored_key, stored_cursor in self.storage.scan(Family.CURSORS, b"", None, 1 << 16):
            origin = int.from_bytes(origin_stored_key, "big")
            self._cursors[origin] = tuple(decode_value(Family.CURSORS, stored_cursor, origin_stored_key))

    # -- the log -----------------------------------------------------------------

    def next_log_position(self) -> LogPosition:
        position = (self.incarnation, self._log_next_seq)
        self._log_next_seq += 1
        return position

    def positions_held(self) -> dict[int, LogPosition]:
        """How far each origin's log is held here, this node's own included."""
        held = dict(self._cursors)
        held[self.node_id] = self._log_last
        return held

    @property
    def log_trimmed_through(self) -> LogPosition:
        """The last position this origin trimmed (R11); LOG_START if none."""
        return self._log_trimmed_through

    def append_log(self, position: LogPosition, record: LogRecord) -> None:
        assert position > self._log_last, (
            f"log position {position} is not after the last one, {self._log_last}"
        )
        self._log_last = position
        self._log_record_count += 1
        # Lazily durable: the own vote for a payload syncs first, and a record
        # lost with an unsynced tail is never named again (R1).
        self._write(
            [(Family.LOG, durable.position_key(position), durable.log_record_to_bytes(record))],
            sync=False,
        )
        self._log_tail_positions.append(position)
        self._log_tail_records.append(record)
        kept_max = self.options.log_tail_cached_records_max
        if len(self._log_tail_positions) > 2 * kept_max:
            dropped = len(self._log_tail_positions) - kept_max
            self._log_tail_after = self._log_tail_positions[dropped - 1]
            del self._log_tail_positions[:dropped]
            del self._log_tail_records[:dropped]

    def _log_records_after(self, start: LogPosition, count_max: int) -> tuple:
        """Up to `count_max` (position, record) pairs after `start`, from the
        cached tail when it covers them, else read from the log."""
        if start >= self._log_tail_after:
            positions = self._log_tail_positions
            first = bisect.bisect_right(positions, start)
            last = first + count_max
            return tuple(zip(positions[first:last], self._log_tail_records[first:last], strict=True))
        found = self.storage.scan(Family.LOG, durable.position_key(start) + b"\x00", None, count_max)
        return tuple(
            (durable.position_from_key(stored_key), durable.log_record_from_bytes(stored, stored_key))
            for stored_key, stored in found
        )

    def trim_log(self) -> None:
        """R11: drop records every peer acknowledged, and the oldest beyond retention."""
        acks = [stream.acked for stream in self._streams.values()]
        floor = min(acks) if None not in acks and acks else None
        excess = self._log_record_count - self.options.log_retained_records_max
        if excess <= 0 and (floor is None or floor <= self._log_trimmed_through):
            return
        found = self.storage.scan(Family.LOG, b"", None, self.options.log_trim_batch_records_max)
        writes = []
        trimmed_through = None
        for stored_key, stored in found:
            position = durable.position_from_key(stored_key)
            if excess <= 0 and (floor is None or position > floor):
                break
            record = durable.log_record_from_bytes(stored, stored_key)
            if isinstance(record, PayloadRecord) and self.payloads.payload_pinned(record.key, record.ref):
                # Pinned payloads survive trimming, in the payloads column family.
                writes.append(
                    (Family.PAYLOADS, durable.ref_key(record.ref), encode_value([record.key, record.payload]))
                )
            writes.append((Family.LOG, stored_key, None))
            trimmed_through = position
            excess -= 1
        if trimmed_through is None:
            return
        self._log_record_count -= sum(1 for write in writes if write[0] == Family.LOG)
        self._log_trimmed_through = trimmed_through
        writes.append((Family.META, durable.LOG_TRIMMED_KEY, encode_value(list(trimmed_through))))
        self._write(writes, sync=False)  # one batch: lost together, the records come back too
        self.observer(events.LogTrimmed(self.node_id, trimmed_through))

    # -- sending -----------------------------------------------------------------

    def pump_streams(self) -> None:
        """Send each peer the log records after what was sent, within its window."""
        for peer, stream in self._streams.items():
            if stream.acked is None or stream.sent >= self._log_last:
                continue
            start = max(stream.sent, stream.acked)
            if start < self._log_trimmed_through:
                # R11: what this peer needs next is trimmed: hand it to state transfer.
                self._send(peer, StreamTrimmed(self._log_trimmed_through))
                stream.sent = self._log_trimmed_through
                continue
            if (
                start[0] == stream.acked[0]
                and start[1] - stream.acked[1] >= self.options.stream_window_records
            ):
                continue  # the window is full until the peer acks
            batch = _bounded_in_bytes(
                self._log_records_after(start, self.options.stream_batch_records_max),
                self.options.stream_batch_max_bytes,
            )
            if not batch:
                continue
            self._send(peer, StreamRecords(start, batch))
            stream.sent = batch[-1][0]

    def on_stream_ack(self, source: int, message: StreamAck) -> None:
        stream = self._streams[source]
        position = message.position
        if stream.acked is None or position > stream.acked:
            stream.acked = position
            stream.last_progress_tick = self.now
        # An ack below what was sent means records are still in flight, or
        # were lost: the retransmit timer (on tick) covers the second case.
        stream.sent = max(stream.sent, stream.acked)

    # -- receiving ---------------------------------------------------------------

    def on_stream_trimmed(self, source: int, message: StreamTrimmed) -> None:
        cursor = self._cursors.get(source, LOG_START)
        trim_point = message.trimmed_through
        if trim_point > cursor:
            # R12: the cursor moves first, in one batch with the walk that
            # finds the decisions below it (a crash keeps both or neither).
            cursor = trim_point
            self._cursors[source] = cursor
            self._write(
                [
                    self.catch_up.start_walk(source, trim_point),
                    (Family.CURSORS, durable.origin_key(source), encode_value(list(cursor))),
                ]
            )
            self.catch_up.continue_walk(source)
        self._ack(source)

    def _ack(self, origin: int) -> None:
        self._sync_first()  # R11: the cursor it names, and the records below it, are synced
        self._send(origin, StreamAck(self._cursors.get(origin, LOG_START)))
        self._last_ack_tick[origin] = self.now
        self._unacked_records[origin] = 0

    def on_stream_records(self, source: int, message: StreamRecords) -> None:
        cursor = self._cursors.get(source, LOG_START)
        if message.after > cursor:
            self._ack(source)  # a gap: resend from our cursor
            return
        touched_refs = []
        for position, record in message.records:
            if position <= cursor:
                continue  # already held: storing is idempotent
            match record:
                case PayloadRecord(ref=ref, key=key, payload=payload):
                    if not self.payloads.store_payload(ref, key, payload):
                        break  # corrupt: don't act on it, don't ack past it (invariant 5)
                    touched_refs.append((ref, key))
                case DecisionRecord(key=key, instance=instance):
                    self.acceptor.learn_decision(key, instance)
            cursor = position
        self._cursors[source] = cursor
        # Lazily durable, like the records before it: the ack syncs first.
        self._write(
            [(Family.CURSORS, durable.origin_key(source), encode_value(list(cursor)))], sync=False
        )
        unacked = self._unacked_records.get(source, 0) + len(message.records)
        if unacked >= self.options.stream_ack_records_max:
            self._ack(source)
        else:
            self._unacked_records[source] = unacked
        for ref, key in touched_refs:
            self.acceptor.on_payload_stored(ref, key)

    # -- time --------------------------------------------------------------------

    def on_tick(self) -> None:
        for stream in self._streams.values():
            if stream.acked is not None and stream.sent > stream.acked and (
                self.now - stream.last_progress_tick >= self.options.stream_retransmit_ticks
            ):
                stream.sent = stream.acked  # go back and resend from the ack
                stream.last_progress_tick = self.now
        for origin in self.peers:
            if self._unacked_records.get(origin, 0) or self.now - self._last_ack_tick.get(
                origin, -(10**9)
            ) >= self.options.stream_ack_interval_ticks:
                self._ack(origin)


def record_size_bytes(record: LogRecord) -> int:
    """A record's bytes in a message, near enough to bound a batch (the
    fixed part is in options.MESSAGE_OVERHEAD_BYTES)."""
    if isinstance(record, PayloadRecord):
        return len(record.payload) + len(record.key) + 64
    return len(record.key) + 64


def _bounded_in_bytes(batch: tuple, size_max_bytes: int) -> tuple:
    """The longest prefix of `batch` within `size_max_bytes`; at least one record."""
    total = 0
    for index, (_position, record) in enumerate(batch):
        total += record_size_bytes(record)
        if total > size_max_bytes and index > 0:
            return batch[:index]
    return batch

