"""Catch-up: pulling what a replica lacks, from any peer.

Theory of operation. A replica whose `chosen` is above its applied version
(it learned a decision it cannot apply yet) pulls what it misses; it never
deduces it. docs/protocol-rules.md: "A decision may exist in no stream at all: pulling
is the only complete path."

- Payload by ref: a payload first needed is given `payload_fetch_grace_ticks`
  to arrive on its origin's stream (an Accept or a Commit often overtakes
  the record that carries it, and asking at once would send every such
  payload twice); then `FetchPayload` to the ref's origin first, then to
  each other peer in turn (the origin may be down). A reply is stored only if
  its bytes match the ref's crc32c (invariant 5). When every peer has said
  it holds none (payloads are collected once applied, payloads.py), the
  replica takes the key's state instead.
- State by key: when the instance after the applied version is unknown or
  its payload is gone, `FetchState(key, version_min)` asks a peer for its
  applied state at a version >= what we know is decided. A table's rows
  come in pages (`state_transfer_page_rows_max`, `_page_max_bytes`), all
  read in the sender's one step, so all at one version; the receiver
  installs the state once it holds every page of one version. Installing
  (R12) only ever moves the applied version up; it raises `chosen` and
  never touches the promise or the accepted vote, so an acceptor that
  catches up this way keeps every promise and vote it gave.
- Decisions by key range: a receiver whose stream cursor fell below its
  origin's trimmed log (StreamTrimmed, log_stream.py) has missed that
  origin's Decision records. It moves its cursor to the trim point first
  (R12: the cursor is taken before the transfer starts), then walks the
  origin's keys in order, `walk_page_keys_max` per FetchDecisions, learning
  each key's decided instance. The origin's `chosen` for a key is at least
  every decision it ever logged for that key (it saves `chosen` before it
  logs the record), so the walk finds all it missed; each key that is
  behind then catches up by payload or state as above. The walk's position
  is durable, so it resumes after a restart, and it asks for a next page
  only while fewer than `catch_up_keys_max` keys are catching up.

- Keys left behind by a restart: which keys are decided beyond what is
  applied is kept in memory (acceptor.catching_up) and lost in a crash, and
  a key nobody writes or reads again would stay behind for good. So after
  every start the acceptor records are swept once, `walk_page_keys_max`
  per tick while fewer than `catch_up_keys_max` keys are catching up, and
  every key found behind catches up as above.

Every fetch is retried every `fetch_retry_ticks` while it is needed,
rotating over the peers.

Calls into other parts (its `USES`; the replica connects exactly these):
acceptor: `advance`, `catching_up`, `learn_decision`, `on_payload_stored`;
payloads: `payload_entry`, `store_payload`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from kvsvr.core import keyspace, model
from kvsvr.replication import durable, events
from kvsvr.replication.core import (
    Part,
    ReplicaCore,
    decode_value,
    encode_value,
    ignore_event,
    state_digest,
)
from kvsvr.replication.messages import (
    ZERO_BALLOT,
    DecisionsReply,
    FetchDecisions,
    FetchPayload,
    FetchState,
    LogPosition,
    PayloadReply,
    Ref,
    StateReply,
)
from kvsvr.storage import Family

if TYPE_CHECKING:
    from kvsvr.replication.acceptor import Acceptor
    from kvsvr.replication.payloads import PayloadStore

# A row's size beyond its value (ids, versions, framing), for page sizes.
_ROW_OVERHEAD_BYTES = 32


@dataclasses.dataclass
class StagedState:
    """Pages of one version of a key's state from one peer, until every page is here."""

    source: int
    version: int
    pages: int
    rows_by_page: dict[int, list] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class PayloadFetch:
    """Asking peers for the payload of `ref`."""

    ref: Ref


@dataclasses.dataclass(frozen=True, slots=True)
class StateFetch:
    """Asking peers for a key's state (a decided version it cannot replay to)."""

    key: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class WalkFetch:
    """Asking `origin` for the next page of its decisions (a walk after a trim)."""

    origin: int


Fetch = PayloadFetch | StateFetch | WalkFetch


class CatchUp(Part):
    USES = (Family.ACCEPTOR, "payloads")
    acceptor: Acceptor
    payloads: PayloadStore

    def __init__(self, core: ReplicaCore) -> None:
        super().__init__(core)
        # what is being fetched -> the tick its next retry may leave
        self._fetch_retry_at: dict[Fetch, int] = {}
        self._fetch_attempt_count: dict[Fetch, int] = {}
        # Peers that said they hold none, as a set: a duplicated or late reply
        # from one peer must not count as a second peer's.
        self._payload_misses: dict[Ref, set[int]] = {}
        self._staged_states: dict[bytes, StagedState] = {}
        # origin -> (the trim point that started the walk, the next key to ask for)
        self._walks: dict[int, tuple[LogPosition, bytes]] = {}
        # The next acceptor record the sweep after a start reads; None: done.
        self._restart_sweep_from: bytes | None = b""

    def load_walks(self) -> None:
        """At start: resume every unfinished walk."""
        prefix = durable.WALK_PREFIX
        for stored_key, stored in self.storage.scan(Family.META, prefix, prefix + b"\xff", 1 << 16):
            origin = int.from_bytes(stored_key[len(prefix) :], "big")
            trim_point, next_key = decode_value(Family.META, stored, stored_key)
            self._walks[origin] = (tuple(trim_point), next_key)

    # -- asking ----------------------------------------------------------------

    def fetch_payload(self, ref: Ref, preferred: int) -> None:
        what = PayloadFetch(ref)
        grace = self.options.payload_fetch_grace_ticks
        if grace and what not in self._fetch_retry_at and what not in self._fetch_attempt_count:
            # First needed: give the origin's stream its grace before asking.
            self._fetch_retry_at[what] = self.now + grace
            return
        if not self._due(what):
            return
        targets = [preferred] if preferred in self.peers else []
        targets += [peer for peer in self.peers if peer != preferred]
        # The origin first; after a miss, anyone (it may have crashed).
        attempt = self._fetch_attempts(what)
        self._send(targets[attempt % len(targets)], FetchPayload(ref))

    def fetch_state(self, key: bytes, version_min: int) -> None:
        if not self._due(StateFetch(key)):
            return
        attempt = self._fetch_attempts(StateFetch(key))
        self._send(self.peers[attempt % len(self.peers)], FetchState(key, version_min))

    def payload_held_nowhere(self, ref: Ref) -> bool:
        return len(self._payload_misses.get(ref, ())) >= len(self.peers)

    def _due(self, what: Fetch) -> bool:
        retry_at = self._fetch_retry_at.get(what)
        if retry_at is not None and retry_at > self.now:
            return False
        self._fetch_retry_at[what] = self.now + self.options.fetch_retry_ticks
        return True

    def _fetch_attempts(self, what: Fetch) -> int:
        attempts = self._fetch_attempt_count.get(what, 0)
        self._fetch_attempt_count[what] = attempts + 1
        return attempts

    def _forget_fetch(self, what: Fetch) -> None:
        """The fetch is answered: the next one (if any) may leave at once."""
        self._fetch_retry_at.pop(what, None)

    def payload_arrived(self, ref: Ref) -> None:
        self._fetch_done(PayloadFetch(ref))

    def _fetch_done(self, what: Fetch) -> None:
        """What the fetch was for is here: forget it altogether."""
        self._fetch_retry_at.pop(what, None)
        self._fetch_attempt_count.pop(what, None)

    # -- serving peers ---------------------------------------------------------

    def on_fetch_payload(self, source: int, message: FetchPayload) -> None:
        entry = self.payloads.payload_entry(message.ref)
        if entry is None:
            self._send(source, PayloadReply(message.ref, b"", None))
            return
        key, payload = entry
        self._send(source, PayloadReply(message.ref, key, payload))

    def on_fetch_state(self, source: int, message: FetchState) -> None:
        key = message.key
        state = self.keyspace.key_state(key)
        if state.version < message.version_min:
            self._send(source, StateReply(key, message.version_min, None, None, None))
            return
        chosen = self._consensus_of(key).chosen
        described = [state.version, state.kind, state.value]
        if state.kind != model.KIND_TABLE:
            self._send(source, StateReply(key, message.version_min, described, None, chosen))
            return
        rows = [[row_id, row.version, row.value] for row_id, row in self.keyspace.all_rows(key)]
        pages = self._pages_of(rows)
        for page, page_rows in enumerate(pages):
            self._send(
                source,
                StateReply(key, message.version_min, described, page_rows, chosen, page, len(pages)),
            )

    def _pages_of(self, rows: list) -> list[list]:
        """Rows cut into pages bounded in count and in bytes; at least one page."""
        pages: list[list] = [[]]
        page_bytes = 0
        for row in rows:
            size = len(row[0]) + len(row[2] or b"") + _ROW_OVERHEAD_BYTES
            if pages[-1] and (
                len(pages[-1]) >= self.options.state_transfer_page_rows_max
                or page_bytes + size > self.options.state_transfer_page_max_bytes
            ):
                pages.append([])
                page_bytes = 0
            pages[-1].append(row)
            page_bytes += size
        return pages

    def on_fetch_decisions(self, source: int, message: FetchDecisions) -> None:
        page_keys = self.options.walk_page_keys_max
        found = self.storage.scan(Family.ACCEPTOR, message.start_key, None, page_keys + 1)
        decisions = []
        for key, stored in found[:page_keys]:
            consensus = self.core.peek_consensus(key, stored)
            if consensus.chosen is not None:
                decisions.append((key, consensus.chosen))
        next_key = found[page_keys][0] if len(found) > page_keys else None
        self._send(
            source, DecisionsReply(message.start_key, tuple(decisions), next_key, message.walk)
        )

    # -- taking what peers send ------------------------------------------------

    def on_payload_reply(self, source: int, message: PayloadReply) -> None:
        if message.payload is None:
            self._payload_misses.setdefault(message.ref, set()).add(source)
            self._forget_fetch(PayloadFetch(message.ref))  # ask the next one
            return
        if self.payloads.store_payload(message.ref, message.key, message.payload):
            self._payload_misses.pop(message.ref, None)
            self.acceptor.on_payload_stored(message.ref, message.key)

    def on_state_reply(self, source: int, message: StateReply) -> None:
        key = message.key
        if message.state is None:
            self._forget_fetch(StateFetch(key))  # ask the next peer
            return
        version, kind, value = message.state
        if version <= self._applied_version(key):
            self._staged_states.pop(key, None)
            return  # R12: state transfer only moves the applied version up
        rows = message.rows
        if message.pages > 1:
            staged = self._staged_states.get(key)
            if staged is None or (staged.source, staged.version, staged.pages) != (
                source,
                version,
                message.pages,
            ):
                staged = self._staged_states[key] = StagedState(source, version, message.pages)
            staged.rows_by_page[message.page] = message.rows
            if len(staged.rows_by_page) < staged.pages:
                return
            del self._staged_states[key]
            rows = [row for page in range(staged.pages) for row in staged.rows_by_page[page]]
        self._install_state(key, model.KeyState(version, kind, value), rows, message.chosen)

    def _install_state(
        self, key: bytes, installed: model.KeyState, rows: list | None, chosen
    ) -> None:
        """R12: the applied state moves up to `installed`; promise and vote stay."""
        writes = [(Family.KEYS, key, installed.to_record())]
        if rows is not None:
            writes.extend(keyspace.table_writes(key, rows))
        self._write(writes)
        self.observer(events.StateInstalled(self.node_id, key, installed.version))
        self.core.catch_up_counts["states_installed"] += 1
        if self.observer is not ignore_event:
            self.observer(
                events.Applied(self.node_id, key, installed.version, state_digest(self, key))
            )
        consensus = self._consensus_of(key)
        if self.options.bug_state_transfer_resets_acceptor:
            consensus.promised, consensus.accepted = ZERO_BALLOT, None
        if chosen is not None:
            self.acceptor.learn_decision(key, chosen)
        for first_version in [v for v in consensus.pending if v <= installed.version]:
            self._payload_misses.pop(consensus.pending.pop(first_version).ref, None)
        self._save(key)
        self._fetch_done(StateFetch(key))
        self.acceptor.advance(key)

    # -- the walk of an origin's decided keys ------------------------------------

    def _walk_record(self, origin: int, trim_point: LogPosition, next_key: bytes):
        """The write that makes a walk's position durable."""
        self._walks[origin] = (trim_point, next_key)
        return (Family.META, durable.walk_key(origin), encode_value([list(trim_point), next_key]))

    def start_walk(self, origin: int, trim_point: LogPosition):
        """Begin walking `origin`'s decided keys; returns the write that records it,
        to go in one batch with the cursor it moves (R12)."""
        self._forget_fetch(WalkFetch(origin))
        self.observer(events.WalkStarted(self.node_id, origin))
        self.core.catch_up_counts["walks_started"] += 1
        return self._walk_record(origin, trim_point, b"")

    def continue_walk(self, origin: int) -> None:
        if len(self.acceptor.catching_up) >= self.options.catch_up_keys_max:
            return  # the keys already behind first; the tick asks again
        if self._due(WalkFetch(origin)):
            trim_point, next_key = self._walks[origin]
            self._send(origin, FetchDecisions(next_key, trim_point))

    def on_decisions_reply(self, source: int, message: DecisionsReply) -> None:
        if self._walks.get(source) != (message.walk, message.start_key):
            return  # for a walk that ended, moved on, or was started again
        for key, instance in message.decisions:
            self.acceptor.learn_decision(key, instance)
        self._forget_fetch(WalkFetch(source))
        if message.next_key is None:
            del self._walks[source]
            self._write([(Family.META, durable.walk_key(source), None)])
            return
        self._write([self._walk_record(source, message.walk, message.next_key)])
        self.continue_walk(source)

    def on_tick(self) -> None:
        for origin in sorted(self._walks):
            self.continue_walk(origin)
        if self._restart_sweep_from is not None and (
            len(self.acceptor.catching_up) < self.options.catch_up_keys_max
        ):
            self._sweep_after_restart()

    def _sweep_after_restart(self) -> None:
        page_max = self.options.walk_page_keys_max
        page = self.storage.scan(Family.ACCEPTOR, self._restart_sweep_from, None, page_max + 1)
        for key, stored in page[:page_max]:
            if self.core.peek_consensus(key, stored).chosen_version > self.keyspace.key_state(key).version:
                self.acceptor.advance(key)
        self._restart_sweep_from = page[page_max][0] if len(page) > page_max else None
