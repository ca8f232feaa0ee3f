"""Storage behind a small interface: one on RocksDB, one in memory.

Theory. The node needs four things of its disk: read a record, read an
ordered range, write a batch atomically, and know when a batch is synced.
`Storage` is exactly that. Records are raw bytes here; checksums and
encodings live in `records.py`, above this layer, so both implementations
are checked the same way.

Column families (one RocksDB database, one shared write-ahead log):

    keys         key -> key state (version, kind, value or tombstone)
    rows         u16 len || key || row id -> row (version changed, value)
    row_changes  u16 len || key || u64 version -> row ids changed then
    acceptor     key -> per-key consensus state (promised, accepted, chosen)
    log          the node's own replication log, by sequence number
    payloads     payloads received from peers, by ref
    cursors      stream cursors per (origin, incarnation)
    meta         node identity: incarnation, format version

Durability. `write(..., sync=True)` returns only after the batch and every
write before it are on disk (one WAL, so a synced batch persists every
earlier write that returned). The in-memory implementation models a crash
the way the design brief asks: it drops a suffix of the unsynced writes,
never a random subset.

Corruption (docs/jepsen.md, "corrupt"). An acceptor that silently loses a
synced promise or vote can break safety for its whole group, so a damaged
data directory is refused, never half-recovered: the WAL is replayed in
absolute-consistency mode (a bad checksum or a cut record anywhere stops
the open; point-in-time recovery silently dropped everything after it),
every block of every column family is read once at open (RocksDB checks a
block's checksum only when something reads it), and a scan whose iterator
fails raises instead of returning what it read so far. The error names the
damaged file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Protocol

import rocksdict

COLUMN_FAMILIES = (
    "keys",
    "rows",
    "row_changes",
    "acceptor",
    "log",
    "payloads",
    "cursors",
    "meta",
)

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
        self, column_family: str, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to `limit` records with start <= key < end (end None: no bound), in key order."""
        ...

    def write(self, writes: Sequence[Write], sync: bool) -> None: ...

    def sync(self) -> None:
        """Make every write that has returned durable."""
        ...

    def close(self) -> None: ...


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


class RocksStorage:
    """Storage on one RocksDB database with a column family per record kind.

    Writes from the group committer run in a worker thread (rocksdict
    releases the GIL in write), reads run on the event loop: point reads
    are served from RocksDB's memtable and block cache in microseconds.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as error:
            raise StorageError(f"cannot create data directory {self.path}: {error}") from error
        options = _options()
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        # Any damage to the WAL stops the open (see Corruption above); a crash
        # that tears an unsynced last record is refused too, which is safe.
        options.set_wal_recovery_mode(rocksdict.DBRecoveryMode.absolute_consistency())
        options.set_paranoid_checks(True)
        try:
            self._db = rocksdict.Rdict(
                self.path,
                options,
                column_families={name: _options() for name in COLUMN_FAMILIES},
            )
        except Exception as error:  # rocksdict raises plain Exception for IO and lock errors
            raise _open_error(self.path, error) from error
        self._handles = {name: self._db.get_column_family_handle(name) for name in COLUMN_FAMILIES}
        self._families = {name: self._db.get_column_family(name) for name in COLUMN_FAMILIES}
        try:
            self._read_every_block()
        except StorageError:
            self._db.close()
            raise
        self._synced_write = rocksdict.WriteOptions()
        self._synced_write.sync = True
        self._unsynced_write = rocksdict.WriteOptions()
        self._unsynced_write.sync = False
        self._close_lock = threading.Lock()
        self._closed = False

    def get(self, column_family: str, key: bytes) -> bytes | None:
        return self._families[column_family].get(key)

    def scan(
        self, column_family: str, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        iterator = self._families[column_family].iter()
        iterator.seek(start)
        found: list[tuple[bytes, bytes]] = []
        while iterator.valid() and len(found) < limit:
            key = iterator.key()
            if end is not None and key >= end:
                break
            found.append((key, iterator.value()))
            iterator.next()
        self._raise_if_failed(iterator, column_family)
        return found

    def _read_every_block(self) -> None:
        """Read every record once: a block's checksum is checked only when it is read."""
        for column_family in COLUMN_FAMILIES:
            iterator = self._families[column_family].iter()
            iterator.seek_to_first()
            while iterator.valid():
                iterator.next()
            self._raise_if_failed(iterator, column_family)

    def _raise_if_failed(self, iterator: rocksdict.RdictIter, column_family: str) -> None:
        """An unreadable block ends an iteration early: raise, never answer short."""
        try:
            iterator.status()
        except Exception as error:
            raise StorageError(
                f"data directory {self.path} is corrupt ({column_family}): {error}", corrupt=True
            ) from error

    def write(self, writes: Sequence[Write], sync: bool) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        handles = self._handles
        for column_family, key, value in writes:
            if value is None:
                batch.delete(key, handles[column_family])
            else:
                batch.put(key, value, handles[column_family])
        # A failed write or fsync raises here; the committer stops the node.
        self._db.write(batch, self._synced_write if sync else self._unsynced_write)

    def sync(self) -> None:
        # One WAL for every column family: syncing it persists every write
        # that has returned, in order.
        self._db.flush_wal(True)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._families.clear()
            self._handles.clear()
            self._db.close()


def _options() -> rocksdict.Options:
    return rocksdict.Options(raw_mode=True)


def _open_error(path: str, error: Exception) -> StorageError:
    """Why the open failed; for corruption, with the damaged file named.

    RocksDB names the file in SST and MANIFEST errors but not in WAL ones
    ("Corruption: checksum mismatch"); its own LOG file names it, in the
    line that says what recovery would have dropped.
    """
    text = str(error)
    if "Corruption" not in text:
        return StorageError(f"cannot open data directory {path}: {text}")
    if ".log" not in text and ".sst" not in text:
        try:
            with open(os.path.join(path, "LOG"), errors="replace") as info_log:
                damaged = [line for line in info_log if "Corruption" in line and ".log:" in line]
        except OSError:
            damaged = []
        if damaged:
            text += " (" + damaged[0].split("] ", 2)[-1].strip() + ")"
    return StorageError(f"data directory {path} is corrupt: {text}", corrupt=True)
