"""The materialised state of keys on storage: how it is written and read.

Theory. A key's applied state lives in three column families: `keys`
(its KeyState: version, kind, value or tombstone), and for a table `rows`
(each row at the version that last changed it) and `row_changes` (the row
ids each version changed); their keys and records are in
docs/architecture.md ("Storage layout").

`applied_writes` turns one applied mutation into the records that store
it; `Keyspace` answers reads from what is stored. Both the single-node
engine and the replica use this module, so a key's state is laid out the
same way whoever applied it.

A table's change index is what makes `sync(key, since)` cheap: the rows
changed after `since` are found by scanning the index from since+1, and
each row is reported once, at the version that last changed it.
"""

from __future__ import annotations

from typing import Any

from kvsvr.core import model, records
from kvsvr.core.requests import Get, Scan, Sync, TableGet, TableRows
from kvsvr.protocol.errors import NotFound
from kvsvr.storage import Family, Storage
from kvsvr.storage import Write as StorageWrite

Result = dict[str, Any]

# Rows or keys a listing may step over (deleted rows, tombstones) for each
# item it returns, before it stops and hands back a resume token.
_SKIPPED_PER_ITEM_MAX = 4


def applied_writes(key: bytes, applied: model.Applied) -> list[StorageWrite]:
    """The records that store one applied mutation of `key`."""
    new_state = applied.state
    writes: list[StorageWrite] = [(Family.KEYS, key, new_state.to_record())]
    if applied.row_changes:
        for row_id, row in applied.row_changes:
            writes.append((Family.ROWS, records.row_record_key(key, row_id), row.to_record()))
        changed_row_ids = [row_id for row_id, _ in applied.row_changes]
        writes.append(
            (
                Family.ROW_CHANGES,
                records.change_record_key(key, new_state.version),
                records.encode_record(changed_row_ids),
            )
        )
    return writes


def table_writes(key: bytes, rows: list) -> list[StorageWrite]:
    """Records installing a table's rows ([row_id, version, value]) by state
    transfer, with change-index entries so `sync` finds them."""
    writes: list[StorageWrite] = []
    changed: dict[int, list[bytes]] = {}
    for row_id, version, value in rows:
        writes.append((Family.ROWS, records.row_record_key(key, row_id), model.Row(version, value).to_record()))
        changed.setdefault(version, []).append(row_id)
    for version, row_ids in changed.items():
        writes.append(
            (Family.ROW_CHANGES, records.change_record_key(key, version), records.encode_record(row_ids))
        )
    return writes


# The bytes of the items one scan or row listing answers with (the client
# pages on with the resume token): with the default 4 MiB frame and 1 MiB
# values, a page of large values always fits its answer frame.
ANSWER_ITEMS_MAX_BYTES = 1024 * 1024
# An item's encoding beyond its byte strings (its version, kind, framing).
_ITEM_OVERHEAD_BYTES = 32


class Keyspace:
    """Reads of the applied state of keys, straight from storage."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def key_state(self, key: bytes) -> model.KeyState:
        stored = self.storage.get(Family.KEYS, key)
        if stored is None:
            return model.KeyState()
        return model.KeyState.from_record(stored, key)

    def all_rows(self, key: bytes) -> list[tuple[bytes, model.Row]]:
        """Every row of a table, deleted ones included (for state transfer)."""
        prefix = records.table_prefix(key)
        found = self.storage.scan(Family.ROWS, prefix, records.prefix_end(prefix), 1 << 62)
        return [
            (record_key[len(prefix) :], model.Row.from_record(stored, record_key))
            for record_key, stored in found
        ]

    def read(self, request: Get | Sync | TableGet | TableRows | Scan) -> Result:
        match request:
            case Get():
                return model.get_answer(request.key, self.key_state(request.key))
            case Sync():
                return self._sync(request)
            case TableGet():
                return self._table_get(request)
            case TableRows():
                return self._table_rows(request)
            case Scan():
                return self._scan(request)
        raise AssertionError(f"not a storage read: {request!r}")


    def table_state(self, key: bytes) -> model.KeyState:
        state = self.key_state(key)
        model.require_kind(key, state, model.KIND_TABLE)
        return state

    def _sync(self, request: Sync) -> Result:
        """Rows changed after `since`, each once at its latest version, in version order.

        Whole versions only: with `more`, the answer's `version` is the last
        version included, and syncing again from it continues where this
        stopped. A row changed again later is sent at its later version.
        """
        key = request.key
        state = self.table_state(key)
        if request.since >= state.version:
            return {"version": state.version, "rows": [], "more": False}
        prefix = records.table_prefix(key)
        change_records = self.storage.scan(
            Family.ROW_CHANGES,
            records.change_record_key(key, request.since + 1),
            records.prefix_end(prefix),
            request.limit + 1,
        )
        rows: list[list] = []
        covered = request.since
        for record_key, stored in change_records:
            version = records.version_from_change_key(len(prefix), record_key)
            row_ids = records.decode_record(stored, column_family=Family.ROW_CHANGES, key=record_key)
            assert isinstance(row_ids, list), f"malformed change record {record_key!r}"
            if rows and len(rows) + len(row_ids) > request.limit:
                break
            for row_id in row_ids:
                row = self.row(key, row_id)
                assert row is not None and row.version >= version, "row older than its change"
                if row.version == version:
                    rows.append([row_id, row.version, row.value])
            covered = version
        more = covered < state.version
        return {"version": covered if more else state.version, "rows": rows, "more": more}

    def row(self, key: bytes, row_id: bytes) -> model.Row | None:
        record_key = records.row_record_key(key, row_id)
        stored = self.storage.get(Family.ROWS, record_key)
        return None if stored is None else model.Row.from_record(stored, record_key)

    def _table_get(self, request: TableGet) -> Result:
        state = self.table_state(request.key)
        row = self.row(request.key, request.row_id)
        if row is None or row.value is None:
            raise NotFound(
                f"row {request.row_id!r} of {request.key!r} not found",
                version=0 if row is None else row.version,
                key=request.key,
            )
        return {"value": row.value, "version": row.version, "table_version": state.version}

    def _table_rows(self, request: TableRows) -> Result:
        key = request.key
        state = self.table_state(key)
        prefix = records.table_prefix(key)
        found = self.storage.scan(
            Family.ROWS,
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
            Family.KEYS, request.start, request.end, request.limit * _SKIPPED_PER_ITEM_MAX
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
    """Up to `limit` items of the records found, skipping deleted ones, and
    at most ANSWER_ITEMS_MAX_BYTES of them (at least one item), so a page of
    large values still fits one answer frame.

    Returns the items and a resume token (the key just after the last record
    looked at), or None when the range is exhausted.
    """
    items: list = []
    items_bytes = 0
    last_key = None
    for record_key, stored in found:
        if len(items) == limit:
            return items, last_key + b"\x00"
        entry = item(record_key, decode(record_key, stored))
        if entry is not None:
            size = _ITEM_OVERHEAD_BYTES + sum(
                len(part) for part in entry if isinstance(part, bytes)
            )
            if items and items_bytes + size > ANSWER_ITEMS_MAX_BYTES:
                return items, last_key + b"\x00"
            items.append(entry)
            items_bytes += size
        last_key = record_key
    if scanned_all or last_key is None:
        return items, None
    return items, last_key + b"\x00"
