"""The single-node engine: requests in, results and write batches out.

Theory of operation. The engine is sans-IO: it never awaits, sleeps or
touches a socket. It executes one typed request at a time against the
storage, and keeps the bookkeeping that group commit needs:

- Writes are applied at once to an in-memory overlay (`_dirty`, the newest
  state of each key written but not yet synced) and their records are
  appended to the batch being filled, *generation* `open_generation`. A
  write's answer is released only once its generation is synced
  (`Outcome.generation`), so nothing is acknowledged before it is durable.
- The shell's committer calls `take_batch()` to cut the open batch (which
  starts the next generation), writes it with one sync off the event loop,
  then calls `batch_synced(generation)`, which drops the overlay entries
  that batch made durable.
- A read of a key with an unsynced write waits for that write's
  generation: it may not return a state that a crash could still undo. A
  Key-Value read answers from the overlay state it saw (linearizable: the
  write it sees is ordered before it and is durable when it is answered);
  table reads and scans run against the storage once it is synced.

Bad input raises a KvError (answered, nothing changed); a broken invariant
is an AssertionError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from kvsvr import model, records
from kvsvr.errors import NotFound, Overloaded
from kvsvr.limits import Limits
from kvsvr.requests import (
    Get,
    Ping,
    Request,
    Scan,
    Status,
    Sync,
    TableGet,
    TableRows,
    Write,
)
from kvsvr.storage import Storage
from kvsvr.storage import Write as StorageWrite

Result = dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """An answer, to be sent once `generation` is synced (0: at once).

    `result` is the answer itself, or a function that computes it after the
    generation is synced (reads that must see the synced storage).
    """

    result: Result | Callable[[], Result]
    generation: int = 0


# Rows or keys a listing may step over (deleted rows, tombstones) for each
# item it returns, before it stops and hands back a resume token.
_SKIPPED_PER_ITEM_MAX = 4


class Engine:
    def __init__(self, storage: Storage, limits: Limits):
        self.storage = storage
        self.limits = limits
        self.open_generation = 1
        self.synced_generation = 0
        self._dirty: dict[bytes, tuple[model.KeyState, int]] = {}
        self._pending_writes: list[StorageWrite] = []
        self._pending_keys: list[bytes] = []
        self._keys_by_generation: dict[int, list[bytes]] = {}
        self._latest_write_generation = 0
        self.commit_queue_ops = 0  # records cut or open, not yet synced
        self.writes_applied = 0
        self.batches_synced = 0

    # -- the committer's side ------------------------------------------------

    def take_batch(self) -> tuple[int, list[StorageWrite]] | None:
        """Cut the open batch for syncing; None if it is empty."""
        if not self._pending_writes:
            return None
        generation = self.open_generation
        writes = self._pending_writes
        self._keys_by_generation[generation] = self._pending_keys
        self._pending_writes = []
        self._pending_keys = []
        self.open_generation += 1
        return generation, writes

    def batch_synced(self, generation: int, record_count: int) -> None:
        assert generation == self.synced_generation + 1, "batches must sync in order"
        self.synced_generation = generation
        self.batches_synced += 1
        self.commit_queue_ops -= record_count
        assert self.commit_queue_ops >= 0
        for key in self._keys_by_generation.pop(generation):
            entry = self._dirty.get(key)
            if entry is not None and entry[1] == generation:
                del self._dirty[key]

    @property
    def has_pending_writes(self) -> bool:
        return bool(self._pending_writes)

    # -- requests ------------------------------------------------------------

    def execute(self, request: Request) -> Outcome:
        match request:
            case Get(key=key):
                return self._get(key)
            case Write():
                return self._write(request)
            case Sync():
                return self._after_key_synced(request.key, lambda: self._sync(request))
            case TableGet():
                return self._after_key_synced(request.key, lambda: self._table_get(request))
            case TableRows():
                return self._after_key_synced(request.key, lambda: self._table_rows(request))
            case Scan():
                return self._after_all_synced(lambda: self._scan(request))
            case Status():
                return Outcome(self.statistics())
            case Ping():
                return Outcome({})
        raise AssertionError(f"unhandled request {request!r}")

    def statistics(self) -> Result:
        return {
            "writes_applied": self.writes_applied,
            "batches_synced": self.batches_synced,
            "commit_queue_ops": self.commit_queue_ops,
            "unsynced_keys": len(self._dirty),
        }

    def key_state(self, key: bytes) -> model.KeyState:
        """The newest state of `key`, synced or not."""
        entry = self._dirty.get(key)
        if entry is not None:
            return entry[0]
        return self._stored_key_state(key)

    def _stored_key_state(self, key: bytes) -> model.KeyState:
        stored = self.storage.get("keys", key)
        if stored is None:
            return model.KeyState()
        return model.KeyState.from_record(stored, key)

    def _get(self, key: bytes) -> Outcome:
        entry = self._dirty.get(key)
        if entry is None:
            state = model.value_or_not_found(key, self._stored_key_state(key))
            return Outcome({"value": state.value, "version": state.version})
        state, generation = entry

        def answer() -> Result:
            found = model.value_or_not_found(key, state)
            return {"value": found.value, "version": found.version}

        return Outcome(answer, generation)

    def _write(self, request: Write) -> Outcome:
        key = request.key
        if self.commit_queue_ops >= self.limits.commit_queue_ops_max:
            raise Overloaded(
                f"{self.commit_queue_ops} records are waiting for commit; retry later", key=key
            )
        state = self.key_state(key)
        model.check(key, state, request.mutation, request.condition)
        applied = model.apply(state, request.mutation)
        new_state = applied.state
        writes: list[StorageWrite] = [("keys", key, new_state.to_record())]
        if applied.row_changes:
            for row_id, row in applied.row_changes:
                writes.append(("rows", records.row_record_key(key, row_id), row.to_record()))
            changed_row_ids = [row_id for row_id, _ in applied.row_changes]
            writes.append(
                (
                    "row_changes",
                    records.change_record_key(key, new_state.version),
                    records.encode_record(changed_row_ids),
                )
            )
        generation = self.open_generation
        self._pending_writes.extend(writes)
        self._pending_keys.append(key)
        self._dirty[key] = (new_state, generation)
        self._latest_write_generation = generation
        self.commit_queue_ops += len(writes)
        self.writes_applied += 1
        result: Result = {"version": new_state.version}
        if isinstance(request.mutation, model.Delete):
            result["existed"] = applied.existed
        return Outcome(result, generation)

    def _after_key_synced(self, key: bytes, read: Callable[[], Result]) -> Outcome:
        entry = self._dirty.get(key)
        if entry is None:
            return Outcome(read())
        return Outcome(read, entry[1])

    def _after_all_synced(self, read: Callable[[], Result]) -> Outcome:
        if self._latest_write_generation <= self.synced_generation:
            return Outcome(read())
        return Outcome(read, self._latest_write_generation)

    # -- reads against synced storage ------------------------------------------

    def _table_state(self, key: bytes) -> model.KeyState:
        state = self._stored_key_state(key)
        model.require_kind(key, state, model.KIND_TABLE)
        return state

    def _sync(self, request: Sync) -> Result:
        """Rows changed after `since`, each once at its latest version, in version order.

        Whole versions only: with `more`, the answer's `version` is the last
        version included, and syncing again from it continues where this
        stopped. A row changed again later is sent at its later version.
        """
        key = request.key
        state = self._table_state(key)
        if request.since >= state.version:
            return {"version": state.version, "rows": [], "more": False}
        prefix = records.table_prefix(key)
        change_records = self.storage.scan(
            "row_changes",
            records.change_record_key(key, request.since + 1),
            records.prefix_end(prefix),
            request.limit + 1,
        )
        rows: list[list] = []
        covered = request.since
        for record_key, stored in change_records:
            version = records.version_from_change_key(len(prefix), record_key)
            row_ids = records.decode_record(stored, column_family="row_changes", key=record_key)
            assert isinstance(row_ids, list), f"malformed change record {record_key!r}"
            if rows and len(rows) + len(row_ids) > request.limit:
                break
            for row_id in row_ids:
                row = self._stored_row(key, row_id)
                assert row is not None and row.version >= version, "row older than its change"
                if row.version == version:
                    rows.append([row_id, row.version, row.value])
            covered = version
        more = covered < state.version
        return {"version": covered if more else state.version, "rows": rows, "more": more}

    def _stored_row(self, key: bytes, row_id: bytes) -> model.Row | None:
        record_key = records.row_record_key(key, row_id)
        stored = self.storage.get("rows", record_key)
        return None if stored is None else model.Row.from_record(stored, record_key)

    def _table_get(self, request: TableGet) -> Result:
        state = self._table_state(request.key)
        row = self._stored_row(request.key, request.row_id)
        if row is None or row.value is None:
            raise NotFound(
                f"row {request.row_id!r} of {request.key!r} not found",
                version=0 if row is None else row.version,
                key=request.key,
            )
        return {"value": row.value, "version": row.version, "table_version": state.version}

    def _table_rows(self, request: TableRows) -> Result:
        key = request.key
        state = self._table_state(key)
        prefix = records.table_prefix(key)
        found = self.storage.scan(
            "rows",
            prefix + request.start_row,
            records.prefix_end(prefix),
            request.limit * _SKIPPED_PER_ITEM_MAX,
        )
        rows, resume = _live_items(
            found,
            request.limit,
            decode=lambda record_key, stored: model.Row.from_record(stored, record_key),
            item=lambda record_key, row: [record_key[len(prefix) :], row.version, row.value]
            if row.value is not None
            else None,
            scanned_all=len(found) < request.limit * _SKIPPED_PER_ITEM_MAX,
        )
        if resume is not None:
            resume = resume[len(prefix) :]
        return {"rows": rows, "resume": resume, "table_version": state.version}

    def _scan(self, request: Scan) -> Result:
        found = self.storage.scan(
            "keys", request.start, request.end, request.limit * _SKIPPED_PER_ITEM_MAX
        )

        def item(key: bytes, state: model.KeyState) -> list | None:
            if state.kind == model.KIND_KEY_VALUE and state.value is None:
                return None  # a tombstone
            return [key, state.value, state.version, state.kind]

        items, resume = _live_items(
            found,
            request.limit,
            decode=lambda key, stored: model.KeyState.from_record(stored, key),
            item=item,
            scanned_all=len(found) < request.limit * _SKIPPED_PER_ITEM_MAX,
        )
        return {"items": items, "resume": resume}


def _live_items(found, limit, *, decode, item, scanned_all):
    """Up to `limit` items of the records found, skipping deleted ones.

    Returns the items and a resume token (the key just after the last record
    looked at), or None when the range is exhausted.
    """
    items: list = []
    last_key = None
    for record_key, stored in found:
        if len(items) == limit:
            return items, last_key + b"\x00"
        last_key = record_key
        entry = item(record_key, decode(record_key, stored))
        if entry is not None:
            items.append(entry)
    if scanned_all or last_key is None:
        return items, None
    return items, last_key + b"\x00"



