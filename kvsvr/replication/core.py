"""What every part of a replica shares: identity, storage, effects, per-key records.

Theory. `replica.Replica` is composed of parts, each an object in its own
module that owns its state and opens with its own theory:

    acceptor.py    acceptor and learner: votes, decisions, applying in order
    catch_up.py    pulling what a replica lacks: payloads by ref, state by key,
                   decisions by key range
    payloads.py    where payload bytes live, what pins them, collecting them
    proposer.py    coordinating writes: Prepare, recovery, Accept, batching
    reads.py       linearizable reads
    log_stream.py  the node's own replication log and its stream to each peer

Every part is a `Part` over one `ReplicaCore`, which holds what they share
and the only three ways a step acts on the world: `_write` (to storage,
unsynced, as one batch per step; the step then asks its shell for a sync,
unless what it wrote is only lazily durable, see `_write`),
`_send` (a message, which leaves after that sync) and `_reply` (a client
answer, last). `_take_effects` hands them to the shell as one `Effects`.
A part calls another only through that part's public methods, reached as
`self.<part>.<method>`, and only the parts it names in `USES`: the
replica connects exactly those, so the graph of who calls whom is the
`USES` lines of the six modules.

The per-key consensus record (durable.KeyConsensus) is cached in memory;
`_save` marks it changed, and it is written once at the end of the step,
in the step's one batch (step_writes.py).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cbor2
import crc32c

from kvsvr.core import keyspace, model, records
from kvsvr.protocol.limits import Limits
from kvsvr.replication import durable
from kvsvr.replication.messages import (
    EARLY_MESSAGES,
    Accepted,
    Effects,
    Instance,
    Message,
    Vote,
)
from kvsvr.replication.options import ReplicaOptions
from kvsvr.replication.step_writes import StepWrites
from kvsvr.storage import Family

if TYPE_CHECKING:
    import random

    from kvsvr.replication.events import Event


class ReplicaCore:
    node_id: int
    members: tuple[int, ...]
    peers: tuple[int, ...]
    majority: int
    storage: Any
    keyspace: keyspace.Keyspace
    rng: random.Random
    options: ReplicaOptions
    limits: Limits
    observer: Callable[[Event], None]
    now: int
    incarnation: int
    started: bool

    def __init__(
        self,
        node_id: int,
        members: tuple[int, ...],
        storage,
        rng: random.Random,
        options: ReplicaOptions,
        limits: Limits,
        observer: Callable[[Event], None] | None,
    ) -> None:
        assert node_id in members and len(set(members)) == len(members)
        self.node_id = node_id
        self.members = tuple(sorted(members))
        self.peers = tuple(member for member in self.members if member != node_id)
        self.majority = len(self.members) // 2 + 1
        # Reads and writes go through the step's write buffer (step_writes.py).
        self.storage = StepWrites(storage, before_flush=self._write_unsaved)
        # Keys whose consensus record changed in this step: written once, at
        # its end (`_save` may be called several times for one key).
        self._unsaved_keys: dict[bytes, None] = {}
        self.keyspace = keyspace.Keyspace(self.storage)
        self.rng = rng
        self.options = options
        self.limits = limits
        # The simulator's window into the replica: observer(event), events.py.
        self.observer = observer or ignore_event
        self.now = 0
        self.incarnation = 0
        self.started = False
        self._effects = Effects()
        self._consensus: dict[bytes, durable.KeyConsensus] = {}
        # How often this replica caught up other than by its streams (status).
        self.catch_up_counts: collections.Counter = collections.Counter()

    # -- effects ---------------------------------------------------------------

    def _take_effects(self) -> Effects:
        self.storage.flush()
        effects, self._effects = self._effects, Effects()
        if self.options.bug_reply_before_sync:
            effects.sync = False  # planted bug: messages may leave before the sync
        if self.options.bug_vote_sent_early:
            effects.early = EARLY_MESSAGES | {Accepted}  # planted bug: a vote leaves unsynced
        return effects

    def _write(self, writes, *, sync: bool = True) -> None:
        """Write at once, unsynced. With `sync`, nothing of the step but its
        early messages leaves before the writes are durable. Without it the
        writes are *lazily durable*: made durable by the next sync whoever
        asks for it, and nothing this step sends vouches for them (the
        classes allowed are in docs/replication.md, "Lazily durable")."""
        if writes:
            self.storage.write(writes, sync=False)
            if sync:
                self._effects.sync = True

    def _sync_first(self) -> None:
        """This step's late messages vouch for earlier writes that may be
        lazily durable (a stream ack names a cursor): sync before they leave."""
        self._effects.sync = True

    def _send(self, destination: int, message: Message) -> None:
        self._effects.messages.append((destination, message))

    def _broadcast(self, message: Message) -> None:
        for member in self.members:
            self._send(member, message)

    def _reply(self, request_id: int, answer: Any) -> None:
        self._effects.replies.append((request_id, answer))

    # -- durable per-key consensus state ----------------------------------------

    def _consensus_of(self, key: bytes) -> durable.KeyConsensus:
        found = self._consensus.get(key)
        if found is None:
            stored = self.storage.get(Family.ACCEPTOR, key)
            found = (
                durable.KeyConsensus()
                if stored is None
                else durable.KeyConsensus.from_record(stored, key)
            )
            self._consensus[key] = found
        return found

    def peek_consensus(self, key: bytes, stored: bytes) -> durable.KeyConsensus:
        """Key's record as cached, or decoded from `stored` without caching it
        (a walk of the keys reads many once)."""
        return self._consensus.get(key) or durable.KeyConsensus.from_record(stored, key)

    def _save(self, key: bytes, *, sync: bool = True) -> None:
        """Write key's record at the end of the step; with `sync`, nothing of
        the step but its early messages leaves before it is durable. Without
        it the record is lazily durable (`_write`): only for a change that
        adds a decision or an applied version, never a promise or a vote."""
        self._unsaved_keys[key] = None
        if sync:
            self._effects.sync = True

    def _write_unsaved(self) -> None:
        if self._unsaved_keys:
            keys, self._unsaved_keys = self._unsaved_keys, {}
            self.storage.write([(Family.ACCEPTOR, key, self._consensus[key].to_record()) for key in keys])

    def _applied_version(self, key: bytes) -> int:
        return self.keyspace.key_state(key).version

    def consensus_snapshot(self, key: bytes) -> durable.KeyConsensus:
        return self._consensus_of(key)


class Part:
    """One part of a replica: its own state, the core's identity, storage and
    effects, and the other parts it names in `USES` (set by `connect`)."""

    USES: tuple[str, ...] = ()

    def __init__(self, core: ReplicaCore) -> None:
        self.core = core
        self.node_id = core.node_id
        self.members = core.members
        self.peers = core.peers
        self.majority = core.majority
        self.storage = core.storage
        self.keyspace = core.keyspace
        self.rng = core.rng
        self.options = core.options
        self.limits = core.limits
        self.observer = core.observer
        self._write = core._write
        self._sync_first = core._sync_first
        self._send = core._send
        self._broadcast = core._broadcast
        self._reply = core._reply
        self._consensus_of = core._consensus_of
        self._save = core._save
        self._applied_version = core._applied_version

    @property
    def now(self) -> int:
        return self.core.now

    @property
    def incarnation(self) -> int:
        return self.core.incarnation

    def connect(self, **parts: Part) -> None:
        assert set(parts) == set(self.USES), (type(self).__name__, sorted(parts), self.USES)
        for name, part in parts.items():
            setattr(self, name, part)


def ignore_event(event: Event) -> None:
    pass


def remember_decision(consensus: durable.KeyConsensus, instance: Instance) -> None:
    """Keep `instance` among the key's few most recent decisions (R9)."""
    if instance in consensus.recent:
        return
    consensus.recent.append(instance)
    consensus.recent.sort(key=lambda item: item.first_version)
    del consensus.recent[: -durable.RECENT_DECISIONS_MAX]


def votes_after(decided_version: int, votes) -> list[Vote]:
    """The votes (None for none) for the instance right after `decided_version`."""
    return [
        vote
        for vote in votes
        if vote is not None and vote.instance.first_version == decided_version + 1
    ]


def decode_mutations(payload: bytes) -> list[model.Mutation]:
    return [model.mutation_from_wire(item) for item in cbor2.loads(payload)]


def encode_value(value: object) -> bytes:
    return records.encode_record(value)


def decode_value(family: Family, stored: bytes, stored_key: bytes) -> Any:
    return records.decode_record(stored, column_family=family, key=stored_key)


def decode_int(family: Family, stored: bytes, stored_key: bytes) -> int:
    value = decode_value(family, stored, stored_key)
    assert isinstance(value, int)
    return value


def state_digest(replica: ReplicaCore, key: bytes) -> int:
    """A hash of key's applied state, compared across replicas per version."""
    state = replica.keyspace.key_state(key)
    parts = [state.version, state.kind, state.value]
    if state.kind == model.KIND_TABLE:
        parts.append(
            [[row_id, row.version, row.value] for row_id, row in replica.keyspace.all_rows(key)]
        )
    return crc32c.crc32c(cbor2.dumps(parts))
