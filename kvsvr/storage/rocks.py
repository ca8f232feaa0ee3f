"""Storage on RocksDB: one database, a column family per record kind.

Corruption (docs/jepsen.md, "corrupt"). An acceptor that silently loses a
synced promise or vote can break safety for its whole group, so a damaged
data directory is refused, never half-recovered: the WAL is replayed in
absolute-consistency mode (a bad checksum or a cut record anywhere stops
the open; point-in-time recovery silently dropped everything after it),
every block of every column family is read once at open (RocksDB checks a
block's checksum only when something reads it), and a scan whose iterator
fails raises instead of returning what it read so far. The error names the
damaged file.

A torn last record is not damage. A crash (kill -9 included: the kernel
may stop a write at a page boundary) can leave the newest WAL ending inside
the record that was being written when it came. That record's batch had
not been synced, so nothing that depended on it was acknowledged or sent.
Like etcd's WAL repair of an unexpected end of file, the open then drops
that one record and says so (`torn_tail_dropped`); only that: the
absolute-consistency replay has already checked every record before it,
and a truncation anywhere but at the end of the newest WAL, or any bad
checksum, still refuses the open. What this cannot tell apart from a torn
write is a newest WAL cut short after its records were synced (a disk or
file system that lost a synced tail): the node then starts without them.
"""
from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence

import rocksdict

from kvsvr.storage.interface import COLUMN_FAMILIES, StorageError, Write


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
        # What the open dropped: a torn last WAL record, described; else None.
        self.torn_tail_dropped: str | None = None
        try:
            self._db = self._open(rocksdict.DBRecoveryMode.absolute_consistency())
        except Exception as error:  # rocksdict raises plain Exception for IO and lock errors
            refused = _open_error(self.path, error)
            torn = _torn_tail(self.path, refused)
            if torn is None:
                raise refused from error
            try:
                # Every record before the torn one passed the replay above.
                self._db = self._open(rocksdict.DBRecoveryMode.tolerate_corrupted_tail_records())
            except Exception as again:  # as above: rocksdict raises plain Exception
                raise _open_error(self.path, again) from again
            self.torn_tail_dropped = torn
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


    def _open(self, wal_recovery_mode) -> rocksdict.Rdict:
        options = _options()
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        # Any damage to the WAL stops the open (see Corruption above).
        options.set_wal_recovery_mode(wal_recovery_mode)
        options.set_paranoid_checks(True)
        return rocksdict.Rdict(
            self.path, options, column_families={name: _options() for name in COLUMN_FAMILIES}
        )


# What RocksDB reports when the WAL ends inside a record.
_TORN_TAIL_SIGNS = ("truncated record body", "truncated header")


def _torn_tail(path: str, refused: StorageError) -> str | None:
    """The torn record, described, when the open failed only because the
    newest WAL ends inside its last record; None for anything else."""
    text = str(refused)
    if not refused.corrupt or not any(sign in text for sign in _TORN_TAIL_SIGNS):
        return None
    if "bad record length" in text or "checksum" in text:
        return None
    named = re.findall(r"(\d+)\.log", text)
    logs = [int(name[:-4]) for name in os.listdir(path) if re.fullmatch(r"\d+\.log", name)]
    if not named or not logs or int(named[-1]) != max(logs):
        return None
    return text.split("(", 1)[-1].rstrip(")") if "(" in text else text


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
