"""Linearizable reads (docs/protocol-rules.md, "Linearizable read of K").

Theory of operation. A read sends Read(K) to every member and waits for a
majority of replies, each reporting the replica's decided instance, its
accepted vote and its applied version (all synced state: the replies are
messages, which leave after the step's sync). With c the highest decided
version among them:

- no vote above c: the answer is the state at c;
- a majority holding the identical vote (b, c+1, ref): that instance is
  decided (a majority accepted it), and the answer is the state after it;
- votes above c, but no majority: an instance may be in flight. The read
  asks again a few times, then has its proposer run a recovery round,
  which re-proposes the highest vote, never a no-op (a no-op would burn a
  version).

R10: the answer is the state at the version that results, not at c, read
from the local store once the local replica has applied at least that
version (catching up if it must). Every version decided before the read
began is at or below it, and the state served was decided before the read
ends: that is the linearization point.

The same machinery confirms a failed condition (R7): a write whose
condition failed on the coordinator's state at v is answered
`condition_failed` only if a quorum read then finds v still the newest;
otherwise it goes back to the proposer's queue.

Calls into other parts (its `USES`; the replica connects exactly these):
acceptor: `advance`, `learn_decision`; proposer: `retry_write`,
`want_recovery`.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING

from kvsvr.core import model
from kvsvr.core.requests import Get, Sync, TableGet, TableRows
from kvsvr.protocol.errors import KvError, Timeout
from kvsvr.replication.core import Part, ReplicaCore, votes_after
from kvsvr.replication.messages import Read, ReadId, ReadReply
from kvsvr.storage import Family

if TYPE_CHECKING:
    from kvsvr.replication.acceptor import Acceptor
    from kvsvr.replication.proposer import ClientWrite, Proposer


@dataclasses.dataclass(frozen=True)
class ClientRead:
    """A client's read: answered with the state the quorum settled."""

    request_id: int
    request: Get | Sync | TableGet | TableRows


@dataclasses.dataclass(frozen=True)
class ConditionCheck:
    """R7: a write whose condition failed on the state at `version_checked`;
    answered condition_failed only if a quorum finds that state the newest."""

    write: ClientWrite
    version_checked: int


@dataclasses.dataclass
class PendingRead:
    key: bytes
    read_id: ReadId
    purpose: ClientRead | ConditionCheck
    deadline: int
    replies: dict[int, ReadReply] = dataclasses.field(default_factory=dict)
    retry_at: int = 0
    retries: int = 0
    target_version: int | None = None  # set once a quorum settled it


class Reads(Part):
    USES = (Family.ACCEPTOR, "proposer")
    acceptor: Acceptor
    proposer: Proposer

    def __init__(self, core: ReplicaCore) -> None:
        super().__init__(core)
        self._reads: dict[ReadId, PendingRead] = {}
        self._reads_waiting_apply: dict[bytes, list[PendingRead]] = collections.defaultdict(list)
        self._next_read_seq = 1

    def start_read(self, key: bytes, purpose: ClientRead | ConditionCheck, deadline: int) -> None:
        # The incarnation makes the id unique across restarts (R1): replies to
        # a read of an earlier incarnation, still queued, never match.
        read_id = (self.incarnation, self._next_read_seq)
        self._next_read_seq += 1
        read = PendingRead(key, read_id, purpose, deadline)
        self._reads[read.read_id] = read
        self._broadcast(Read(key, read.read_id))
        read.retry_at = self.now + self.options.round_timeout_ticks

    def on_read(self, source: int, message: Read) -> None:
        consensus = self._consensus_of(message.key)
        self._send(
            source,
            ReadReply(
                message.key,
                message.read_id,
                consensus.chosen,
                consensus.accepted,
                self._applied_version(message.key),
            ),
        )

    def on_read_reply(self, source: int, message: ReadReply) -> None:
        read = self._reads.get(message.read_id)
        if read is None or read.target_version is not None or read.key != message.key:
            return
        read.replies[source] = message
        if message.chosen is not None:
            self.acceptor.learn_decision(message.key, message.chosen)
        if len(read.replies) < self.majority:
            return
        decided = max(
            (reply.chosen for reply in read.replies.values() if reply.chosen is not None),
            key=lambda instance: instance.last_version,
            default=None,
        )
        decided_version = 0 if decided is None else decided.last_version
        above = votes_after(decided_version, (reply.accepted for reply in read.replies.values()))
        if above:
            same = collections.Counter(above).most_common(1)[0]
            if same[1] >= self.majority:
                self.acceptor.learn_decision(read.key, same[0].instance)
                decided_version = same[0].instance.last_version
            else:
                # An instance may be in flight: ask again shortly, and after a
                # few tries settle it ourselves with a recovery round.
                read.retries += 1
                read.replies = {}
                read.retry_at = self.now + self.options.round_timeout_ticks
                if read.retries > self.options.read_retries_before_recovery:
                    self.proposer.want_recovery(read.key)
                return
        read.target_version = decided_version
        if (
            self._applied_version(read.key) >= decided_version
            or self.options.bug_read_not_waiting_apply
        ):
            self._finish_read(read)
        else:
            self._reads_waiting_apply[read.key].append(read)
            self.acceptor.advance(read.key)

    def on_tick(self) -> None:
        for read in list(self._reads.values()):
            self._on_read_tick(read)

    def waiting_apply(self, key: bytes) -> bool:
        """Whether a read of `key` waits for the local replica to apply a version."""
        return bool(self._reads_waiting_apply.get(key))

    def keys_waiting_apply(self):
        return self._reads_waiting_apply.keys()

    def _on_read_tick(self, read: PendingRead) -> None:
        if read.deadline <= self.now:
            self._reads.pop(read.read_id, None)
            waiting = self._reads_waiting_apply.get(read.key)
            if waiting and read in waiting:
                waiting.remove(read)
            self._fail_read(read, Timeout("read: no quorum answer before the deadline"))
            return
        if read.target_version is None and read.retry_at <= self.now:
            read.retry_at = self.now + self.options.round_timeout_ticks
            for member in self.members:
                if member not in read.replies:
                    self._send(member, Read(read.key, read.read_id))

    def finish_reads_applied(self, key: bytes, applied_version: int) -> None:
        waiting = self._reads_waiting_apply.pop(key)
        still = [read for read in waiting if read.target_version > applied_version]
        if still:
            self._reads_waiting_apply[key] = still
        for read in waiting:
            if read.target_version <= applied_version:
                self._finish_read(read)

    def _finish_read(self, read: PendingRead) -> None:
        self._reads.pop(read.read_id, None)
        if isinstance(read.purpose, ClientRead):
            self.answer_read(read.purpose)
            return
        write, version_checked = read.purpose.write, read.purpose.version_checked
        if read.target_version == version_checked and self._applied_version(read.key) == (
            version_checked
        ):
            try:
                state = self.keyspace.key_state(read.key)
                model.check(read.key, state, write.request.mutation, write.request.condition)
            except KvError as error:
                self._reply(write.request_id, error)
                return
        # The state moved on since the check: try the write again.
        self.proposer.retry_write(read.key, write)

    def _fail_read(self, read: PendingRead, error: KvError) -> None:
        if isinstance(read.purpose, ClientRead):
            self._reply(read.purpose.request_id, error)
        else:
            self._reply(read.purpose.write.request_id, Timeout("condition not confirmed in time"))

    def answer_read(self, purpose: ClientRead) -> None:
        try:
            self._reply(purpose.request_id, self.keyspace.read(purpose.request))
        except KvError as error:
            self._reply(purpose.request_id, error)
