"""Where payload bytes live, what pins them, and when they are collected.

Theory of operation. A payload (the bytes of a batch of mutations, named
by its ref) lives in one of two places on a node:

- its origin keeps its own payloads in its log (log_stream.py), as the
  PayloadRecord the stream ships, and serves them from there;
- every other copy is in the `payloads` column family: payloads received
  from a peer (stream, fetch, a Promise), and the origin's own payloads
  that were pinned when their log record was trimmed.

A payload is *pinned* on a node while the node may need its bytes to act:
it is the payload of the key's accepted vote here (a Promise hands it to a
recovering proposer), of a decided instance not yet applied here (pending),
or of the node's own proposal in flight. R11: pinned payloads survive log
trimming.

Received payloads are collected by age: every `payload_keep_ticks / 4`
ticks the node notes how far it holds each origin's log (its stream cursor;
its own log tail for itself); a payload at or below a position noted at
least `payload_keep_ticks` ago, and not pinned, is deleted. So a payload
stays while the Accept or decision that follows its stream record may
still come, and a copy stored again after it was applied (the stream is
slower than consensus) does not stay forever.

Collecting is always safe: a node missing a payload it needs fetches it
from the origin, then from any peer, and when every peer says it holds
none, takes the key's state by transfer instead (catch_up.py). Someone
always holds one or the other: a decided instance was accepted by a
majority, whose votes pin its payload until each of them learns the
decision, which pins it as pending until applied.

Calls into other parts (its `USES`; the replica connects exactly these):
log_stream: `positions_held`; proposer: `pins`.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import crc32c

from kvsvr.replication import durable, events
from kvsvr.replication.core import Part, ReplicaCore, decode_value, encode_value
from kvsvr.replication.messages import LogPosition, PayloadRecord, Ref
from kvsvr.storage import Family

if TYPE_CHECKING:
    from kvsvr.replication.log_stream import LogStream
    from kvsvr.replication.proposer import Proposer

# How often, as a fraction of payload_keep_ticks, a node notes how far it holds each log.
_MARKS_PER_KEEP = 4


class PayloadStore(Part):
    USES = ("log_stream", "proposer")
    log_stream: LogStream
    proposer: Proposer

    def __init__(self, core: ReplicaCore) -> None:
        super().__init__(core)
        # (tick, {origin: position held then}), oldest first
        self._payload_marks: collections.deque = collections.deque()
        self._next_payload_mark_tick = 0
        # What may be collected now, per origin: up to the position, resuming
        # after the stored key where the last tick stopped.
        self._payload_collect_bound: dict[int, LogPosition] = {}
        self._payload_collect_from: dict[int, bytes] = {}

    def payload_entry(self, ref: Ref) -> tuple[bytes, bytes] | None:
        """(key, payload bytes) of `ref`, from wherever this node holds it."""
        stored = self.storage.get(Family.PAYLOADS, durable.ref_key(ref))
        if stored is not None:
            key, payload = decode_value(Family.PAYLOADS, stored, durable.ref_key(ref))
            return key, payload
        if ref[0] == self.node_id:
            position_key = durable.position_key((ref[1], ref[2]))
            stored = self.storage.get(Family.LOG, position_key)
            if stored is not None:
                record = durable.log_record_from_bytes(stored, position_key)
                if isinstance(record, PayloadRecord) and record.ref == ref:
                    return record.key, record.payload
        return None

    def payload(self, ref: Ref) -> bytes | None:
        entry = self.payload_entry(ref)
        return None if entry is None else entry[1]

    def store_payload(self, ref: Ref, key: bytes, payload: bytes) -> bool:
        """Store a payload received from a peer; False (and nothing stored) if corrupt."""
        if crc32c.crc32c(payload) != ref[3]:
            self.observer(events.CorruptPayload(self.node_id, ref))
            return False
        self.observer(events.PayloadSeen(ref, payload))
        if self.payload_entry(ref) is None:
            # Lazily durable: a vote for it and an ack past it sync first.
            self._write(
                [(Family.PAYLOADS, durable.ref_key(ref), encode_value([key, payload]))], sync=False
            )
        return True

    def payload_pinned(self, key: bytes, ref: Ref) -> bool:
        consensus = self._consensus_of(key)
        if (
            consensus.accepted is not None
            and consensus.accepted.instance.ref == ref
            and not self.options.bug_vote_payload_unpinned
        ):
            return True
        if any(instance.ref == ref for instance in consensus.pending.values()):
            return True
        return self.proposer.pins(key, ref)

    def collect(self) -> None:
        """On tick: note how far each log is held; delete old unpinned payloads."""
        keep = self.options.payload_keep_ticks
        if self.now >= self._next_payload_mark_tick:
            held = self.log_stream.positions_held()
            self._payload_marks.append((self.now, held))
            self._next_payload_mark_tick = self.now + max(1, keep // _MARKS_PER_KEEP)
        while self._payload_marks and self._payload_marks[0][0] <= self.now - keep:
            _tick, held = self._payload_marks.popleft()
            self._payload_collect_bound = held
            self._payload_collect_from = {}
        budget = self.options.payload_collect_batch_max
        for origin, position in list(self._payload_collect_bound.items()):
            if budget <= 0:
                return
            start = self._payload_collect_from.get(origin, durable.ref_key((origin, 0, 0, 0)))
            end = durable.ref_range_key(origin, position)
            limit = budget
            found = self.storage.scan(Family.PAYLOADS, start, end, limit)
            budget -= len(found)
            deletes = []
            for stored_key, stored in found:
                key, _payload = decode_value(Family.PAYLOADS, stored, stored_key)
                ref = durable.ref_from_key(stored_key)
                if not self.payload_pinned(key, ref):
                    deletes.append((Family.PAYLOADS, stored_key, None))
            self._write(deletes, sync=False)  # a lost delete is collected again
            if len(found) < limit:
                del self._payload_collect_bound[origin]  # done with it until the next mark
                self._payload_collect_from.pop(origin, None)
            else:
                self._payload_collect_from[origin] = found[-1][0] + b"\x00"
