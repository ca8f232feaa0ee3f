"""Every message between replicas, every log record, and the effects type.

Identities (R1). A node's incarnation rises at every start, synced before
it sends anything, so the names below can never mean two things:

    Ballot = (round, incarnation, node_id)        ordered as a tuple
    Ref    = (origin, incarnation, seq, crc32c)   names one payload
    ReadId = (incarnation, seq)                   names one read of the reader

Every reply names the exact request it answers by one of these (a Promise
or Accepted its ballot, a ReadReply its read id), so a reply queued for a
node's previous incarnation and delivered after its restart never counts
for a request of the new one.

An *instance* is one decided step of a key: `Instance(first_version,
count, ref)` applies the `count` mutations in the payload `ref` to reach
versions first_version .. first_version + count - 1 (a batch of mutations
that arrived while the previous instance was in flight; docs/protocol-rules.md,
"dynamic merging"). The key's `chosen` is the last decided instance, and
an Accept is for the instance starting at chosen.last_version + 1.

Two channels (docs/protocol-rules.md): the stream channel carries `StreamRecords`,
`StreamAck` and `StreamTrimmed` (payload bytes, batched); everything else
is the consensus channel, small messages that never wait behind payload
bytes.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import msgspec

Ballot = tuple[int, int, int]  # (round, incarnation, node_id)
Ref = tuple[int, int, int, int]  # (origin, incarnation, seq, crc32c)
LogPosition = tuple[int, int]  # (incarnation, seq) in an origin's log
ReadId = tuple[int, int]  # (incarnation, seq) of the reader

ZERO_BALLOT: Ballot = (0, 0, 0)
LOG_START: LogPosition = (0, 0)


class _Wire(msgspec.Struct, frozen=True, array_like=True):
    """A value that crosses the peer wire: immutable, compared and hashed by
    its fields, encoded as an array of them (codec.py)."""


class _Tagged(_Wire, frozen=True, array_like=True):
    """A message or log record: its tag, first in its array, says which
    (the tags are the wire format: a tag is never reused for another class)."""


class Instance(_Wire):
    first_version: int
    count: int
    ref: Ref

    @property
    def last_version(self) -> int:
        return self.first_version + self.count - 1

    def to_wire(self) -> list:
        return [self.first_version, self.count, list(self.ref)]

    @classmethod
    def from_wire(cls, body: list) -> Instance:
        first_version, count, ref = body
        return cls(first_version, count, tuple(ref))


class Vote(_Wire):
    """An acceptor's accepted value: `instance` at `ballot`."""

    ballot: Ballot
    instance: Instance


# -- consensus channel -----------------------------------------------------------


class Prepare(_Tagged, tag=1):
    key: bytes
    ballot: Ballot


class Promise(_Tagged, tag=2):
    key: bytes
    ballot: Ballot  # echoes the Prepare (R5)
    granted: bool
    promised: Ballot  # the acceptor's promise after this Prepare
    chosen: Instance | None
    accepted: Vote | None
    accepted_payload: bytes | None  # the payload of `accepted`, when the acceptor holds it


class Accept(_Tagged, tag=3):
    key: bytes
    ballot: Ballot
    instance: Instance
    previous: Instance | None  # the decided instance it follows (prev_decision)


class AcceptOutcome(enum.StrEnum):
    """An acceptor's answer to an Accept (on the wire, its value)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"  # its promise is higher
    ALREADY_CHOSEN = "already_chosen"  # the version is decided


class Accepted(_Tagged, tag=4):
    key: bytes
    ballot: Ballot  # echoes (K, b, v, ref) of the Accept (R5)
    instance: Instance
    outcome: AcceptOutcome
    promised: Ballot
    chosen: Instance | None
    # With "already_chosen": the instance decided at this Accept's version, when
    # the acceptor still remembers it, so the proposer learns whether its own
    # ref won (R9) even if `chosen` has moved on.
    decided: Instance | None = None

class Commit(_Tagged, tag=5):
    """A decided instance: the latency shortcut for the Decision log record."""

    key: bytes
    instance: Instance


class Read(_Tagged, tag=6):
    key: bytes
    read_id: ReadId


class ReadReply(_Tagged, tag=7):
    key: bytes
    read_id: ReadId  # echoes the Read
    chosen: Instance | None
    accepted: Vote | None
    applied_version: int


class FetchPayload(_Tagged, tag=8):
    ref: Ref


class PayloadReply(_Tagged, tag=9):
    ref: Ref
    key: bytes
    payload: bytes | None  # None: not held here


class FetchState(_Tagged, tag=10):
    """Ask for the applied state of `key` at a version >= `version_min` (state transfer)."""

    key: bytes
    version_min: int


class StateReply(_Tagged, tag=11):
    """One page of the sender's applied state of `key`.

    A table's rows are split into `pages` messages, all read in one step
    (so all at one version) and sent together; the receiver installs the
    state once it holds every page of one version (R12).
    """

    key: bytes
    version_min: int
    # The sender's applied state (KeyState as [version, kind, value]) and, for
    # a table, this page's rows as [row_id, version, value]; None if it has
    # not applied version_min yet.
    state: list | None
    rows: list | None
    chosen: Instance | None
    page: int = 0
    pages: int = 1


class FetchDecisions(_Tagged, tag=12):
    """Ask for the decided instance of every key from `start_key` on (a key-range walk)."""

    start_key: bytes
    # The walk this page is for: the trim point that started it. A reply is
    # taken only by the walk it names, so a page read before a later trim
    # never counts for the walk that trim starts.
    walk: LogPosition = LOG_START


class DecisionsReply(_Tagged, tag=13):
    start_key: bytes
    decisions: tuple[tuple[bytes, Instance], ...]  # (key, chosen), in key order
    next_key: bytes | None  # where the walk goes on; None: it is complete
    walk: LogPosition = LOG_START  # echoes FetchDecisions.walk


# -- stream channel --------------------------------------------------------------


class PayloadRecord(_Tagged, tag=14):
    """Log record: the bytes of a batch of mutations for `key`."""

    ref: Ref
    key: bytes
    payload: bytes


class DecisionRecord(_Tagged, tag=15):
    """Log record: `instance` of `key` is decided."""

    key: bytes
    instance: Instance


LogRecord = PayloadRecord | DecisionRecord


class StreamRecords(_Tagged, tag=16):
    """Records of the sender's own log, in order, each at its position.

    `after` is the position the first record follows in the sender's log, so
    a receiver whose cursor is below it knows it missed records.
    """

    after: LogPosition
    records: tuple[tuple[LogPosition, LogRecord], ...]


class StreamAck(_Tagged, tag=17):
    """Everything up to `position` of the receiver's copy of our log is synced."""

    position: LogPosition


class StreamTrimmed(_Tagged, tag=18):
    """The sender's log no longer holds the records up to `trimmed_through`.

    A receiver whose cursor is below it moves the cursor there and learns
    what it missed by walking the sender's decided keys (R11, R12).
    """

    trimmed_through: LogPosition


Message = (
    Prepare
    | Promise
    | Accept
    | Accepted
    | Commit
    | Read
    | ReadReply
    | FetchPayload
    | PayloadReply
    | FetchState
    | StateReply
    | FetchDecisions
    | DecisionsReply
    | StreamRecords
    | StreamAck
    | StreamTrimmed
)

STREAM_MESSAGES = (StreamRecords, StreamAck, StreamTrimmed)

# Messages that vouch for nothing durable on their sender, so they may leave
# before the sync of the step that made them: requests (Prepare, Accept,
# Read, the fetches), decisions (Commit: a majority's synced votes made it),
# and the sender's own log records (StreamRecords: a receiver acks only
# what it synced itself, and a record lost in the sender's crash names a
# position its next incarnation never reuses, R1). Everything else (Promise,
# Accepted, ReadReply, PayloadReply, StateReply, DecisionsReply, StreamAck,
# StreamTrimmed) reports the sender's state and waits for it to be synced.
EARLY_MESSAGES = frozenset(
    (Prepare, Accept, Commit, Read, FetchPayload, FetchState, FetchDecisions, StreamRecords)
)


@dataclasses.dataclass
class Effects:
    """What one step of a replica asks of its shell, in this order:

    0. the messages of a class in `early` may be sent at once;
    1. `sync`: the step's late messages vouch for records written unsynced
       (by this step or an earlier one, which reads see at once); sync
       them, with every earlier write. A step that wrote only lazily
       durable records (core._write) asks for none: they ride the next sync;
    2. then the other `messages`: send each (destination node id, message);
    3. then `replies`: answer each (client request id, result map or KvError).

    Nothing in 2 or 3 may leave before 1 is done: a Promise or Accepted is a
    promise about durable state, and a client reply acknowledges a durable
    write. The shell and the simulator obey this in one place each; several
    steps may share one sync (group commit) as long as none of their late
    messages leaves before it.

    Late messages leave in step order: they never overtake those of an
    earlier step still waiting for its sync, even when this step wrote
    nothing (`sync` False). A step may vouch for state an earlier step wrote:
    a resent Prepare is granted again without a write, a ReadReply reports
    the vote an earlier Accept stored, a periodic StreamAck names a cursor
    an earlier batch wrote. In order, they wait for that sync too. Early
    messages overtake them; the protocol never relies on the order of two
    messages (the network may reorder anything).
    """

    sync: bool = False
    messages: list[tuple[int, Message]] = dataclasses.field(default_factory=list)
    replies: list[tuple[int, Any]] = dataclasses.field(default_factory=list)
    early: frozenset = EARLY_MESSAGES  # the classes that may leave before the sync

    def __bool__(self) -> bool:
        return bool(self.sync or self.messages or self.replies)

    def split(self) -> tuple[list[tuple[int, Message]], Effects]:
        """(the messages that may leave now, what must wait for the sync), in order."""
        early, late = [], []
        for sent in self.messages:
            (early if type(sent[1]) in self.early else late).append(sent)
        return early, Effects(self.sync, late, self.replies, self.early)
