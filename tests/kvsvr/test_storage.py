"""The Storage interface: RocksStorage and MemoryStorage behave the same, and
MemoryStorage's crash loses exactly the unsynced suffix of the write order."""

from __future__ import annotations

import pytest

from kvsvr.storage import COLUMN_FAMILIES, MemoryStorage, StorageError
from kvsvr.storage.rocks import RocksStorage


@pytest.fixture(params=["memory", "rocks"])
def storage(request, tmp_path):
    if request.param == "memory":
        opened = MemoryStorage()
    else:
        opened = RocksStorage(tmp_path / "db")
    yield opened
    opened.close()


def test_a_missing_record_reads_as_none(storage):
    """get of a key never written is None in every column family."""
    for column_family in COLUMN_FAMILIES:
        assert storage.get(column_family, b"missing") is None


def test_a_written_batch_is_readable_and_a_none_value_deletes(storage):
    """Records of one batch are all readable after write; None deletes a record."""
    storage.write([("keys", b"a", b"1"), ("keys", b"b", b"2"), ("rows", b"a", b"r")], True)
    assert storage.get("keys", b"a") == b"1"
    assert storage.get("rows", b"a") == b"r"
    storage.write([("keys", b"a", None), ("keys", b"b", b"3")], False)
    assert storage.get("keys", b"a") is None
    assert storage.get("keys", b"b") == b"3"


def test_column_families_are_separate_keyspaces(storage):
    """The same key in two column families holds two records."""
    storage.write([("keys", b"k", b"state"), ("meta", b"k", b"meta")], True)
    assert storage.get("keys", b"k") == b"state"
    assert storage.get("meta", b"k") == b"meta"
    assert storage.scan("acceptor", b"", None, 10) == []


def test_scan_returns_records_in_key_order_within_start_end_and_limit(storage):
    """scan yields start <= key < end, byte-ordered, at most `limit`; end None is unbounded."""
    keys = [b"b", b"a", b"c\x00", b"c", b"\xff", b"ab", b"d"]
    storage.write([("keys", key, key * 2) for key in keys], True)
    assert [key for key, _ in storage.scan("keys", b"", None, 100)] == sorted(keys)
    assert storage.scan("keys", b"ab", b"c\x00", 100) == [
        (b"ab", b"abab"), (b"b", b"bb"), (b"c", b"cc")
    ]
    assert [key for key, _ in storage.scan("keys", b"b", None, 2)] == [b"b", b"c"]
    assert [key for key, _ in storage.scan("keys", b"c\x01", None, 100)] == [b"d", b"\xff"]
    assert storage.scan("keys", b"x", b"y", 10) == []


def test_later_writes_win(storage):
    """Of two writes to one key, in one batch or two, the later one is what is read."""
    storage.write([("keys", b"k", b"1"), ("keys", b"k", b"2")], True)
    assert storage.get("keys", b"k") == b"2"
    storage.write([("keys", b"k", b"3")], True)
    assert storage.get("keys", b"k") == b"3"


def test_sync_keeps_every_unsynced_write_readable(storage):
    """sync() after unsynced writes changes nothing visible (it only makes them durable)."""
    storage.write([("keys", b"a", b"1")], False)
    storage.write([("rows", b"b", b"2")], False)
    storage.sync()
    assert storage.get("keys", b"a") == b"1"
    assert storage.get("rows", b"b") == b"2"


def test_memory_sync_makes_earlier_unsynced_batches_survive_a_crash():
    """MemoryStorage.sync() is what a WAL flush is: every batch written before it survives."""
    storage = MemoryStorage()
    storage.write([("keys", b"a", b"1")], False)
    storage.sync()
    storage.write([("keys", b"b", b"2")], False)
    storage.crash()
    assert storage.get("keys", b"a") == b"1"
    assert storage.get("keys", b"b") is None


def test_rocks_storage_keeps_synced_writes_across_reopen(tmp_path):
    """What was written and synced is there after close and reopen."""
    path = tmp_path / "db"
    storage = RocksStorage(path)
    storage.write([("keys", b"k", b"v"), ("log", b"\0\1", b"entry")], True)
    storage.close()
    storage.close()  # closing twice is harmless
    reopened = RocksStorage(path)
    try:
        assert reopened.get("keys", b"k") == b"v"
        assert reopened.get("log", b"\0\1") == b"entry"
    finally:
        reopened.close()


def test_rocks_storage_refuses_a_data_dir_that_is_a_file(tmp_path):
    """A path that can't hold a database is a StorageError, not a crash."""
    path = tmp_path / "file"
    path.write_text("not a directory")
    with pytest.raises(StorageError):
        RocksStorage(path)


def test_rocks_storage_refuses_a_data_dir_already_open(tmp_path):
    """A second node on the same data directory is refused (RocksDB's lock)."""
    first = RocksStorage(tmp_path / "db")
    try:
        with pytest.raises(StorageError):
            RocksStorage(tmp_path / "db")
    finally:
        first.close()


def test_memory_crash_keeps_synced_writes_and_drops_the_unsynced_suffix():
    """crash(kept) keeps every synced batch and the first `kept` unsynced ones, and drops
    the rest: a suffix of the write order, never a random subset."""
    storage = MemoryStorage()
    storage.write([("keys", b"a", b"synced")], True)
    storage.write([("keys", b"b", b"unsynced-1")], False)
    storage.write([("keys", b"c", b"unsynced-2"), ("keys", b"a", b"overwritten")], False)
    storage.write([("keys", b"d", b"unsynced-3")], False)
    assert storage.unsynced_batch_count == 3
    storage.crash(unsynced_batches_kept=1)
    assert storage.get("keys", b"a") == b"synced"
    assert storage.get("keys", b"b") == b"unsynced-1"
    assert storage.get("keys", b"c") is None
    assert storage.get("keys", b"d") is None
    assert storage.unsynced_batch_count == 0


def test_memory_crash_with_nothing_kept_returns_to_the_last_sync():
    """crash() drops every unsynced batch, including deletes of synced records."""
    storage = MemoryStorage()
    storage.write([("keys", b"a", b"1"), ("keys", b"b", b"2")], True)
    storage.write([("keys", b"a", None), ("keys", b"c", b"3")], False)
    storage.crash()
    assert storage.scan("keys", b"", None, 10) == [(b"a", b"1"), (b"b", b"2")]


def test_memory_sync_makes_every_earlier_unsynced_write_durable():
    """One WAL: a synced batch persists every write before it, so a crash after it keeps
    the earlier unsynced batches too."""
    storage = MemoryStorage()
    storage.write([("keys", b"a", b"1")], False)
    storage.write([("keys", b"b", b"2")], True)
    storage.crash()
    assert storage.get("keys", b"a") == b"1"
    assert storage.get("keys", b"b") == b"2"
