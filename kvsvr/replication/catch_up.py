"""Catch-up: pulling what a replica lacks, from any peer.

Theory of operation. A replica whose `chosen` is above its applied version
(it learned a decision it cannot apply yet) pulls what it misses; it never
deduces it. PROTOCOL.md: "A decision may exist in no stream at all: pulling
is the only complete path."

- Payload by ref: `FetchPayload` to the ref's origin first, then to each
  other peer in turn (the origin may be down). A reply is stored only if
  its bytes match the ref's crc32c (invariant 5).
- State by key: when the instance after the applied version is unknown,
  `FetchState(key, version_min)` asks a peer for its applied state at a
  version >= what we know is decided. Installing it (R12) only ever moves
  the applied version up; it raises `chosen` and never touches the promise
  or the accepted vote, so an acceptor that catches up this way keeps every
  promise it made.

Every fetch is retried every `fetch_retry_ticks` while it is needed,
rotating over the peers.

Calls into other parts: `_on_payload_stored`, `learn_decision`,
`_advance` (acceptor.py).
"""

from __future__ import annotations

from kvsvr import keyspace, model
from kvsvr.replication import durable
from kvsvr.replication.core import ReplicaCore, decode_value, ignore_event, state_digest
from kvsvr.replication.messages import (
    FetchPayload,
    FetchState,
    PayloadReply,
    Ref,
    StateReply,
)


class CatchUp(ReplicaCore):
    def _init_catch_up(self) -> None:
        # ("payload", ref) or ("state", key) -> next retry tick; ("attempts", what) -> count
        self._fetch_retry_at: dict[tuple, int] = {}

    def _fetch_payload(self, ref: Ref, preferred: int) -> None:
        if not self._due(("payload", ref)):
            return
        targets = [preferred] if preferred in self.peers else []
        targets += [peer for peer in self.peers if peer != preferred]
        # The origin first; after a miss, anyone (it may have crashed).
        attempt = self._fetch_attempts(("payload", ref))
        self._send(targets[attempt % len(targets)], FetchPayload(ref))

    def _fetch_state(self, key: bytes, version_min: int) -> None:
        if not self._due(("state", key)):
            return
        attempt = self._fetch_attempts(("state", key))
        self._send(self.peers[attempt % len(self.peers)], FetchState(key, version_min))

    def _due(self, what: tuple) -> bool:
        retry_at = self._fetch_retry_at.get(what)
        if retry_at is not None and retry_at > self.now:
            return False
        self._fetch_retry_at[what] = self.now + self.options.fetch_retry_ticks
        return True

    def _fetch_attempts(self, what: tuple) -> int:
        count_key = ("attempts", what)
        attempts = self._fetch_retry_at.get(count_key, 0)
        self._fetch_retry_at[count_key] = attempts + 1
        return attempts

    # -- serving peers ---------------------------------------------------------

    def on_fetch_payload(self, source: int, message: FetchPayload) -> None:
        stored = self.storage.get("payloads", durable.ref_key(message.ref))
        if stored is None:
            self._send(source, PayloadReply(message.ref, b"", None))
            return
        key, payload = decode_value(stored, durable.ref_key(message.ref))
        self._send(source, PayloadReply(message.ref, key, payload))

    def on_fetch_state(self, source: int, message: FetchState) -> None:
        key = message.key
        state = self.keyspace.key_state(key)
        if state.version < message.version_min:
            self._send(source, StateReply(key, message.version_min, None, None, None))
            return
        rows = None
        if state.kind == model.KIND_TABLE:
            rows = [
                [row_id, row.version, row.value] for row_id, row in self.keyspace.all_rows(key)
            ]
        self._send(
            source,
            StateReply(
                key,
                message.version_min,
                [state.version, state.kind, state.value],
                rows,
                self._consensus_of(key).chosen,
            ),
        )

    # -- taking what peers send ------------------------------------------------

    def on_payload_reply(self, source: int, message: PayloadReply) -> None:
        if message.payload is None:
            self._fetch_retry_at.pop(("payload", message.ref), None)  # ask the next one
            return
        if self._store_payload(message.ref, message.key, message.payload):
            self._on_payload_stored(message.ref, message.key)

    def on_state_reply(self, source: int, message: StateReply) -> None:
        key = message.key
        if message.state is None:
            self._fetch_retry_at.pop(("state", key), None)  # ask the next peer
            return
        version, kind, value = message.state
        local = self.keyspace.key_state(key)
        if version <= local.version:
            return  # R12: state transfer only moves the applied version up
        installed = model.KeyState(version, kind, value)
        writes = [("keys", key, installed.to_record())]
        if message.rows is not None:
            writes.extend(keyspace.table_writes(key, message.rows))
        self._write(writes)
        if self.observer is not ignore_event:
            self.observer("applied", (self.node_id, key, version, state_digest(self, key)))
        consensus = self._consensus_of(key)
        if message.chosen is not None:
            self.learn_decision(key, message.chosen)
        for first_version in [v for v in consensus.pending if v <= version]:
            del consensus.pending[first_version]
        self._save(key)
        self._fetch_retry_at.pop(("state", key), None)
        self._advance(key)
