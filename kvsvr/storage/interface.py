"""The storage interface: what a node needs of its disk, and nothing more.

Theory. The node needs four things of its disk: read a record, read an
ordered range, write a batch atomically, and know when a batch is synced.
`Storage` is exactly that. Records are raw bytes here; checksums and
encodings live in `records.py`, above this layer, so both implementations
are checked the same way.

Column families (`Family`): one RocksDB database, one shared write-ahead
log, one family per kind of record. What each holds, and how its keys are
built, is in docs/architecture.md ("Storage layout"), the one description.

Durability. `write(..., sync=True)` returns only after the batch and every
write before it are on disk (one WAL, so a synced batch persists every
earlier write that returned). The in-memory implementation models a crash
the way the design brief asks: it drops a suffix of the unsynced writes,
never a random subset.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol


class Family(enum.StrEnum):
    """The column families: one per kind of record (the table above)."""

    KEYS = "keys"
    ROWS = "rows"
    ROW_CHANGES = "row_changes"
    ACCEPTOR = "acceptor"
    LOG = "log"
    PAYLOADS = "payloads"
    CURSORS = "cursors"
    META = "meta"


COLUMN_FAMILIES = tuple(family.value for family in Family)

# One write: (column family, key, value); a value of None deletes the key.
Write = tuple[str, bytes, bytes | None]


class StorageError(Exception):
    """The storage could not be opened or used (bad path, locked, corrupt)."""

    def __init__(self, message: str, corrupt: bool = False) -> None:
        super().__init__(message)
        self.corrupt = corrupt  # a checksum or a record failed: the data can't be trusted


class Storage(Protocol):
    def get(self, column_family: str, key: bytes) -> bytes | None: ...

    def scan(
        self, column_family: Family, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to `limit` records with start <= key < end (end None: no bound), in key order."""
        ...

    def write(self, writes: Sequence[Write], sync: bool) -> None: ...

    def sync(self) -> None:
        """Make every write that has returned durable."""
        ...

    def close(self) -> None: ...
