"""A crash that cuts the WAL's last record short is recovered from; damage is not.

kill -9 can stop a write between two pages, leaving the newest WAL ending
inside the record being written. That batch was never synced, so nothing
that depended on it was acknowledged: the node drops that one record and
starts (as etcd's WAL repair does). A flipped byte in a record is still
refused. These tests make both on a copy of a live data directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jepsen_tests.nemesis import wal_records
from kvsvr.storage import StorageError
from kvsvr.storage.rocks import RocksStorage


def crashed_copy(tmp_path: Path, batches: int) -> Path:
    """A copy of a data directory after `batches` synced writes, as a crash leaves it."""
    live = tmp_path / "live"
    storage = RocksStorage(live)
    for number in range(batches):
        storage.write([("keys", f"key{number}".encode(), f"value{number}".encode())], sync=True)
    copy = tmp_path / "copy"
    shutil.copytree(live, copy, ignore=shutil.ignore_patterns("LOCK"))
    storage.close()
    return copy


def newest_wal(data_dir: Path) -> Path:
    return max(data_dir.glob("*.log"), key=lambda path: int(path.stem))


def test_a_last_record_cut_short_is_dropped_and_the_rest_kept(tmp_path):
    copy = crashed_copy(tmp_path, batches=3)
    wal = newest_wal(copy)
    start, end = wal_records(wal.read_bytes())[-1]
    with open(wal, "r+b") as torn:
        torn.truncate(start + (end - start) // 2)
    storage = RocksStorage(copy)
    try:
        assert storage.torn_tail_dropped is not None
        assert wal.name in storage.torn_tail_dropped
        assert storage.get("keys", b"key0") == b"value0"
        assert storage.get("keys", b"key1") == b"value1"
        assert storage.get("keys", b"key2") is None  # the batch the crash cut
    finally:
        storage.close()


def test_a_clean_open_drops_nothing(tmp_path):
    storage = RocksStorage(crashed_copy(tmp_path, batches=2))
    try:
        assert storage.torn_tail_dropped is None
        assert storage.get("keys", b"key1") == b"value1"
    finally:
        storage.close()


def test_a_flipped_byte_in_a_record_is_still_refused(tmp_path):
    copy = crashed_copy(tmp_path, batches=3)
    wal = newest_wal(copy)
    start, end = wal_records(wal.read_bytes())[0]
    with open(wal, "r+b") as damaged:
        damaged.seek(start + (end - start) // 2)
        byte = damaged.read(1)
        damaged.seek(start + (end - start) // 2)
        damaged.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(StorageError) as refused:
        RocksStorage(copy)
    assert refused.value.corrupt
