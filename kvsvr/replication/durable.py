"""What a replica keeps on disk besides the keys' applied state.

Theory. Each record here is in its own column family, checksummed like
every other record (records.py): the per-key consensus state
(`KeyConsensus`, family acceptor), the node's own log, payloads received
from peers, stream cursors, and the node's meta records (incarnation, how
far its log is trimmed, unfinished walks). Keys are fixed-width big-endian
integers so that byte order is numeric order. The table of every family,
key and record is docs/architecture.md ("Storage layout").

Versions and consensus state are never garbage-collected, only value
bytes (R3).
"""

from __future__ import annotations

import dataclasses
import struct

from kvsvr.core import records
from kvsvr.replication.messages import (
    ZERO_BALLOT,
    Ballot,
    DecisionRecord,
    Instance,
    LogPosition,
    LogRecord,
    PayloadRecord,
    Ref,
    Vote,
)
from kvsvr.storage import Family

# Decided instances each key remembers below its applied version, so a
# proposer whose Accept lost can learn which ref won (R9).
RECENT_DECISIONS_MAX = 8

_POSITION = struct.Struct(">IQ")
_REF = struct.Struct(">IIQI")
_ORIGIN = struct.Struct(">I")
INCARNATION_KEY = b"incarnation"
LOG_TRIMMED_KEY = b"log_trimmed_through"
WALK_PREFIX = b"walk"


@dataclasses.dataclass(slots=True)
class KeyConsensus:
    promised: Ballot = ZERO_BALLOT
    accepted: Vote | None = None
    chosen: Instance | None = None
    pending: dict[int, Instance] = dataclasses.field(default_factory=dict)  # by first version
    recent: list[Instance] = dataclasses.field(default_factory=list)

    @property
    def chosen_version(self) -> int:
        return 0 if self.chosen is None else self.chosen.last_version

    def decided_at(self, first_version: int) -> Instance | None:
        found = self.pending.get(first_version)
        if found is not None:
            return found
        for instance in self.recent:
            if instance.first_version == first_version:
                return instance
        return None

    def to_record(self) -> bytes:
        return records.encode_record(
            [
                list(self.promised),
                None if self.accepted is None else vote_to_wire(self.accepted),
                None if self.chosen is None else self.chosen.to_wire(),
                [instance.to_wire() for instance in self.pending.values()],
                [instance.to_wire() for instance in self.recent],
            ]
        )

    @classmethod
    def from_record(cls, stored: bytes, key: bytes) -> KeyConsensus:
        body = records.decode_record(stored, column_family=Family.ACCEPTOR, key=key)
        promised, accepted, chosen, pending, recent = body
        pending_instances = [Instance.from_wire(item) for item in pending]
        return cls(
            tuple(promised),
            None if accepted is None else vote_from_wire(accepted),
            None if chosen is None else Instance.from_wire(chosen),
            {instance.first_version: instance for instance in pending_instances},
            [Instance.from_wire(item) for item in recent],
        )


def vote_to_wire(vote: Vote) -> list:
    return [list(vote.ballot), vote.instance.to_wire()]


def vote_from_wire(body: list) -> Vote:
    return Vote(tuple(body[0]), Instance.from_wire(body[1]))


def position_key(position: LogPosition) -> bytes:
    return _POSITION.pack(*position)


def position_from_key(stored_key: bytes) -> LogPosition:
    return _POSITION.unpack(stored_key)


def ref_key(ref: Ref) -> bytes:
    return _REF.pack(*ref)


def ref_from_key(stored_key: bytes) -> Ref:
    return _REF.unpack(stored_key)


def origin_key(origin: int) -> bytes:
    return _ORIGIN.pack(origin)


def walk_key(origin: int) -> bytes:
    return WALK_PREFIX + _ORIGIN.pack(origin)


def ref_range_key(origin: int, position: LogPosition) -> bytes:
    """The smallest payloads key of `origin` after `position`: refs sort by
    (origin, incarnation, seq), so one origin's payloads up to a position
    are one range."""
    return _REF.pack(origin, position[0], position[1] + 1, 0)


def log_record_to_bytes(record: LogRecord) -> bytes:
    match record:
        case PayloadRecord(ref=ref, key=key, payload=payload):
            return records.encode_record(["payload", list(ref), key, payload])
        case DecisionRecord(key=key, instance=instance):
            return records.encode_record(["decision", key, instance.to_wire()])
    raise AssertionError(f"unknown log record {record!r}")


def log_record_from_bytes(stored: bytes, stored_key: bytes) -> LogRecord:
    body = records.decode_record(stored, column_family=Family.LOG, key=stored_key)
    match body:
        case ["payload", ref, key, payload]:
            return PayloadRecord(tuple(ref), key, payload)
        case ["decision", key, instance]:
            return DecisionRecord(key, Instance.from_wire(instance))
    raise AssertionError(f"malformed log record at {stored_key!r}")
