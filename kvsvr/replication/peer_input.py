"""Checking what a peer sends, before the core acts on it (STYLE.md §7).

Theory of operation. A peer is outside: a message from one is bad input
until shown otherwise, like a client's request. The codec (codec.py)
decodes a frame only into messages whose fields have their declared types;
the simulator and the tests hand messages to the core without it, and
types say nothing of ranges, members or consistency. Two checks stand
between a message and the replica's handlers:

- `check_message` (here, stateless): every field has its type, every
  number its range, every identity names a member, every byte string its
  size bound, payload bytes decode to mutations, and the message is
  internally consistent (an Accept's instance follows the decision it
  carries; a stream batch's positions rise; a stream payload record was
  proposed by the node whose log it is).
- `Replica.check_peer_message` (replica.py, against the replica's state):
  what would trip one of the core's assertions had an honest peer sent it,
  the core's assertions being about our own bugs: a decision that
  contradicts one this node knows (invariant 1), an Accept offering a
  second ref for a (key, ballot, version) this acceptor accepted (R8), a
  decided instance whose mutation count disagrees with its payload.

Either raises `PeerInputError` before anything changes; the shell logs it
and drops the link (the peer reconnects and the protocol resends what was
lost). Nothing here makes the group tolerate a lying member (a member
holding the group's secret is trusted to run the protocol: docs/security.md);
it makes sure no message, however malformed, stops a node or changes its
state.
"""

from __future__ import annotations

import cbor2

from kvsvr.core.model import KIND_KEY_VALUE, KIND_TABLE
from kvsvr.protocol.limits import Limits
from kvsvr.replication import messages as m

# Numbers a peer may send: versions, seqs, rounds and incarnations all fit
# in 62 bits (storage keys pack seqs as u64, incarnations as u32).
NUMBER_MAX = (1 << 62) - 1
INCARNATION_MAX = (1 << 32) - 1
CRC_MAX = (1 << 32) - 1
# Mutations in one instance, whatever the sender's batch_mutations_max.
INSTANCE_MUTATIONS_MAX = 1 << 16
# Entries in one message's sequences (stream records, decisions, rows):
# far above what any honest sender's bounds produce, below what costs memory.
SEQUENCE_ITEMS_MAX = 1 << 16
ACCEPTED_OUTCOMES = frozenset(m.AcceptOutcome)
_KINDS = frozenset((KIND_KEY_VALUE, KIND_TABLE))


class PeerInputError(ValueError):
    """A peer sent a message the node must not act on; the link is dropped."""


def _fail(message: object, why: str) -> PeerInputError:
    return PeerInputError(f"{type(message).__name__}: {why}")


class _Checker:
    """The stateless checks for one message from `source`."""

    def __init__(self, message: object, source: int, members: tuple[int, ...], limits: Limits):
        self.message = message
        self.source = source
        self.members = members
        self.limits = limits

    def fail(self, why: str) -> PeerInputError:
        return _fail(self.message, why)

    def number(self, value: object, what: str, low: int = 0, high: int = NUMBER_MAX) -> int:
        if type(value) is not int or not low <= value <= high:
            raise self.fail(f"{what} must be an integer in [{low}, {high}], not {value!r:.60}")
        return value

    def flag(self, value: object, what: str) -> None:
        if type(value) is not bool:
            raise self.fail(f"{what} must be true or false")

    def blob(self, value: object, what: str, size_max: int, *, empty: bool = True) -> bytes:
        if type(value) is not bytes or len(value) > size_max or (not empty and not value):
            raise self.fail(f"{what} must be {'' if empty else 'non-empty '}bytes of at most "
                            f"{size_max}")
        return value

    def key(self, value: object, what: str = "key") -> bytes:
        return self.blob(value, what, self.limits.key_size_max_bytes, empty=False)

    def pair(self, value: object, what: str, size: int) -> tuple:
        if type(value) is not tuple or len(value) != size:
            raise self.fail(f"{what} must be a tuple of {size}")
        return value

    def member(self, value: object, what: str) -> int:
        if type(value) is not int or value not in self.members:
            raise self.fail(f"{what} {value!r:.40} is not a member of the group")
        return value

    def ballot(self, value: object, what: str = "ballot", *, zero: bool = False) -> m.Ballot:
        ballot = self.pair(value, what, 3)
        if zero and ballot == m.ZERO_BALLOT:
            return ballot
        self.number(ballot[0], f"{what} round", 1)
        self.number(ballot[1], f"{what} incarnation", 1, INCARNATION_MAX)
        self.member(ballot[2], f"{what} node")
        return ballot

    def ref(self, value: object, what: str = "ref") -> m.Ref:
        ref = self.pair(value, what, 4)
        self.member(ref[0], f"{what} origin")
        self.number(ref[1], f"{what} incarnation", 1, INCARNATION_MAX)
        self.number(ref[2], f"{what} seq", 1)
        self.number(ref[3], f"{what} crc32c", 0, CRC_MAX)
        return ref

    def position(self, value: object, what: str) -> m.LogPosition:
        position = self.pair(value, what, 2)
        self.number(position[0], f"{what} incarnation", 0, INCARNATION_MAX)
        self.number(position[1], f"{what} seq")
        return position

    def instance(self, value: object, what: str = "instance", *, none: bool = False):
        if value is None and none:
            return None
        if type(value) is not m.Instance:
            raise self.fail(f"{what} must be an Instance")
        self.number(value.first_version, f"{what} first version", 1)
        self.number(value.count, f"{what} count", 1, INSTANCE_MUTATIONS_MAX)
        self.number(value.last_version, f"{what} last version", 1)
        self.ref(value.ref, f"{what} ref")
        return value

    def vote(self, value: object, what: str = "vote") -> m.Vote | None:
        if value is None:
            return None
        if type(value) is not m.Vote:
            raise self.fail(f"{what} must be a Vote")
        self.ballot(value.ballot, f"{what} ballot")
        self.instance(value.instance, f"{what} instance")
        return value

    def payload(self, value: object, what: str = "payload") -> int:
        """The payload's mutation count, once its bytes are shown to be mutations."""
        self.blob(value, what, self.limits.frame_size_max_bytes)
        count = payload_mutation_count(value, self.limits)
        if count is None:
            raise self.fail(f"{what} is not a list of mutations")
        return count

    def sequence(self, value: object, what: str) -> tuple | list:
        if type(value) not in (tuple, list) or len(value) > SEQUENCE_ITEMS_MAX:
            raise self.fail(f"{what} must be a sequence of at most {SEQUENCE_ITEMS_MAX}")
        return value


def payload_mutation_count(payload: bytes, limits: Limits) -> int | None:
    """How many mutations `payload` holds, or None if it is not a payload
    (a CBOR list of mutations as model.mutation_to_wire writes them)."""
    try:
        body = cbor2.loads(payload)
    except Exception:  # any decoder failure: not a payload
        return None
    if type(body) is not list or not 1 <= len(body) <= INSTANCE_MUTATIONS_MAX:
        return None
    value_max = limits.frame_size_max_bytes
    for item in body:
        match item:
            case ["put", bytes() as value] | ["append", bytes() as value]:
                if len(value) > value_max:
                    return None
            case ["delete"]:
                pass
            case ["table_write", list() as puts, list() as deletes]:
                if not all(
                    type(put) is list and len(put) == 2 and all(type(part) is bytes for part in put)
                    for put in puts
                ) or not all(type(row) is bytes for row in deletes):
                    return None
            case _:
                return None
    return len(body)


def held_payload_count(payload: bytes) -> int:
    """The mutation count of a payload this node holds (checked when it came
    in, or our own), read from its CBOR array header without decoding it."""
    head = payload[0]
    assert head >> 5 == 4, "a stored payload is a CBOR array"
    length = head & 0x1F
    if length < 24:
        return length
    width = 1 << (length - 24)
    assert width <= 8, "a stored payload has a definite length"
    return int.from_bytes(payload[1 : 1 + width], "big")


def check_message(
    message: object, source: int, members: tuple[int, ...], limits: Limits
) -> None:
    """Raise PeerInputError unless `message` is a well-formed message from `source`."""
    check = _Checker(message, source, members, limits)
    match message:
        case m.Prepare(key=key, ballot=ballot):
            check.key(key)
            if check.ballot(ballot)[2] != source:
                raise check.fail("a Prepare's ballot names its sender")
        case m.Promise():
            check.key(message.key)
            check.ballot(message.ballot)
            check.flag(message.granted, "granted")
            check.ballot(message.promised, "promised", zero=True)
            check.instance(message.chosen, "chosen", none=True)
            vote = check.vote(message.accepted, "accepted")
            if message.accepted_payload is not None:
                if vote is None:
                    raise check.fail("a payload without the vote it belongs to")
                if check.payload(message.accepted_payload) != vote.instance.count:
                    raise check.fail("the accepted payload's size is not its instance's count")
        case m.Accept(key=key, ballot=ballot, instance=instance, previous=previous):
            check.key(key)
            if check.ballot(ballot)[2] != source:
                raise check.fail("an Accept's ballot names its sender")
            check.instance(instance)
            follows = 0 if check.instance(previous, "previous", none=True) is None else (
                previous.last_version
            )
            if instance.first_version != follows + 1:
                raise check.fail(f"v{instance.first_version} does not follow the decided "
                                 f"v{follows} it carries")
        case m.Accepted():
            check.key(message.key)
            check.ballot(message.ballot)
            check.instance(message.instance)
            if message.outcome not in ACCEPTED_OUTCOMES:
                raise check.fail(f"unknown outcome {message.outcome!r:.40}")
            check.ballot(message.promised, "promised", zero=True)
            check.instance(message.chosen, "chosen", none=True)
            check.instance(message.decided, "decided", none=True)
        case m.Commit(key=key, instance=instance):
            check.key(key)
            check.instance(instance)
        case m.Read(key=key, read_id=read_id):
            check.key(key)
            _check_read_id(check, read_id)
        case m.ReadReply():
            check.key(message.key)
            _check_read_id(check, message.read_id)
            check.instance(message.chosen, "chosen", none=True)
            check.vote(message.accepted, "accepted")
            check.number(message.applied_version, "applied version")
        case m.FetchPayload(ref=ref):
            check.ref(ref)
        case m.PayloadReply(ref=ref, key=key, payload=payload):
            check.ref(ref)
            if payload is not None:
                check.key(key)
                check.payload(payload)
            else:
                check.blob(key, "key", limits.key_size_max_bytes)
        case m.FetchState(key=key, version_min=version_min):
            check.key(key)
            check.number(version_min, "minimum version")
        case m.StateReply():
            _check_state_reply(check, message)
        case m.FetchDecisions(start_key=start_key, walk=walk):
            check.blob(start_key, "start key", limits.key_size_max_bytes)
            check.position(walk, "walk")
        case m.DecisionsReply():
            check.blob(message.start_key, "start key", limits.key_size_max_bytes)
            previous_key = None
            for entry in check.sequence(message.decisions, "decisions"):
                key, instance = check.pair(entry, "a decision", 2)
                check.key(key, "decided key")
                check.instance(instance, "decided instance")
                if previous_key is not None and key <= previous_key:
                    raise check.fail("decisions must be in key order")
                previous_key = key
            if message.next_key is not None:
                check.key(message.next_key, "next key")
            check.position(message.walk, "walk")
        case m.StreamRecords(after=after, records=records):
            previous = check.position(after, "after")
            for entry in check.sequence(records, "records"):
                position, record = check.pair(entry, "a stream record", 2)
                if check.position(position, "record position") <= previous:
                    raise check.fail("record positions must rise after `after`")
                previous = position
                _check_log_record(check, record)
        case m.StreamAck(position=position):
            check.position(position, "position")
        case m.StreamTrimmed(trimmed_through=position):
            check.position(position, "trim point")
        case _:
            raise _fail(message, "not a peer message")


def _check_read_id(check: _Checker, read_id: object) -> None:
    read_id = check.pair(read_id, "read id", 2)
    check.number(read_id[0], "read id incarnation", 1, INCARNATION_MAX)
    check.number(read_id[1], "read id seq", 1)


def _check_log_record(check: _Checker, record: object) -> None:
    match record:
        case m.PayloadRecord(ref=ref, key=key, payload=payload):
            if check.ref(ref)[0] != check.source:
                raise check.fail("a stream carries only its sender's own payloads")
            check.key(key)
            check.payload(payload)
        case m.DecisionRecord(key=key, instance=instance):
            check.key(key)
            check.instance(instance)
        case _:
            raise check.fail("a stream record must be a payload or a decision")


def _check_state_reply(check: _Checker, message: m.StateReply) -> None:
    check.key(message.key)
    check.number(message.version_min, "minimum version")
    check.instance(message.chosen, "chosen", none=True)
    pages = check.number(message.pages, "pages", 1, SEQUENCE_ITEMS_MAX)
    check.number(message.page, "page", 0, pages - 1)
    if message.state is None:
        if message.rows is not None:
            raise check.fail("rows without a state")
        return
    state = check.sequence(message.state, "state")
    if len(state) != 3:
        raise check.fail("a state is [version, kind, value]")
    version, kind, value = state
    check.number(version, "state version", message.version_min)
    if kind not in _KINDS and not (kind is None and version == 0):
        raise check.fail(f"unknown kind {kind!r:.40}")  # (None: a key never written)
    if value is not None:
        check.blob(value, "value", check.limits.frame_size_max_bytes)
    if (kind == KIND_TABLE) != (message.rows is not None):
        raise check.fail("rows come with a table's state and only with one")
    for row in check.sequence(message.rows or (), "rows"):
        if type(row) not in (list, tuple) or len(row) != 3:
            raise check.fail("a row is [row id, version, value]")
        row_id, row_version, row_value = row
        check.blob(row_id, "row id", check.limits.key_size_max_bytes + 8, empty=False)
        check.number(row_version, "row version", 1, version)
        if row_value is not None:
            check.blob(row_value, "row value", check.limits.frame_size_max_bytes)


__all__ = ["PeerInputError", "check_message", "held_payload_count", "payload_mutation_count"]
