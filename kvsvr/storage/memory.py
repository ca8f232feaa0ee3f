"""Storage in memory, for tests and the simulator, that can lose what a crash loses.

Theory. Two copies of every column family: what has been synced and what
is visible. A write is visible at once and joins the list of unsynced
batches; a sync makes them all durable. `crash(kept)` keeps the first
`kept` unsynced batches and drops the rest, so a crash loses a suffix of
the node's writes, never a random subset, exactly as one write-ahead log
does.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvsvr.storage.interface import COLUMN_FAMILIES, Write


class MemoryStorage:
    """Storage in a dict, for tests and the simulator; can lose unsynced writes."""

    def __init__(self) -> None:
        self._durable: dict[str, dict[bytes, bytes]] = {name: {} for name in COLUMN_FAMILIES}
        self._visible: dict[str, dict[bytes, bytes]] = {name: {} for name in COLUMN_FAMILIES}
        self._unsynced_batches: list[list[Write]] = []
        self.closed = False

    def get(self, column_family: str, key: bytes) -> bytes | None:
        return self._visible[column_family].get(key)

    def scan(
        self, column_family: str, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        table = self._visible[column_family]
        keys = sorted(k for k in table if k >= start and (end is None or k < end))
        return [(k, table[k]) for k in keys[:limit]]

    def write(self, writes: Sequence[Write], sync: bool) -> None:
        assert not self.closed, "write to closed storage"
        batch = list(writes)
        _apply(self._visible, batch)
        self._unsynced_batches.append(batch)
        if sync:
            for pending in self._unsynced_batches:
                _apply(self._durable, pending)
            self._unsynced_batches.clear()

    def sync(self) -> None:
        self.write([], sync=True)

    @property
    def unsynced_batch_count(self) -> int:
        return len(self._unsynced_batches)

    def crash(self, unsynced_batches_kept: int = 0) -> None:
        """Lose every unsynced write after the first `unsynced_batches_kept` batches."""
        assert 0 <= unsynced_batches_kept <= len(self._unsynced_batches)
        for pending in self._unsynced_batches[:unsynced_batches_kept]:
            _apply(self._durable, pending)
        self._unsynced_batches.clear()
        self._visible = {name: dict(table) for name, table in self._durable.items()}

    def close(self) -> None:
        self.closed = True


def _apply(tables: dict[str, dict[bytes, bytes]], writes: Sequence[Write]) -> None:
    for column_family, key, value in writes:
        if value is None:
            tables[column_family].pop(key, None)
        else:
            tables[column_family][key] = value
