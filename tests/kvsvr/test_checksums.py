"""A byte flipped inside a stored record is detected (invariant 5).

Records are written through the engine to a RocksStorage, one byte of one
record is flipped in place on disk (read raw, flip, write back raw), and
the database is served by a real node. Reading the damaged key fails with
a `checksum` error naming it; wrong data is never returned; other keys
still read fine.
"""

from __future__ import annotations

import pytest
from kvsvr_test_support import EngineDriver, serving_node

from kvsvr.client import Client
from kvsvr.core import records
from kvsvr.protocol.errors import ChecksumError
from kvsvr.storage import Family
from kvsvr.storage.rocks import RocksStorage

SECRET = b"the value that must never come back wrong"


def flip_byte(storage: RocksStorage, column_family: str, record_key: bytes, offset: int) -> None:
    """Flip the low bit of one byte of a stored record (negative offsets count from the end)."""
    stored = bytearray(storage.get(column_family, record_key))
    stored[offset] ^= 0x01
    storage.write([(column_family, record_key, bytes(stored))], True)


def populated_storage(path) -> RocksStorage:
    storage = RocksStorage(path)
    store = EngineDriver(storage)
    store.do("put", key=b"damaged", value=SECRET)
    store.do("put", key=b"healthy", value=b"fine")
    for message in (b"first", b"second", b"third"):
        store.do("append", key=b"inbox", value=message)
    return storage


@pytest.mark.parametrize(
    "offset", [0, 3, 4, -1], ids=["crc-first-byte", "crc-last-byte", "body-first-byte", "value-byte"]
)
async def test_a_flipped_byte_in_a_key_record_fails_the_read_naming_the_key(tmp_path, offset):
    """Wherever the flipped byte is (checksum or body), get answers `checksum` naming the
    key, never a value; other keys still read fine."""
    storage = populated_storage(tmp_path / "db")
    flip_byte(storage, "keys", b"damaged", offset)
    async with serving_node(storage) as (_, address), Client(address) as client:
        with pytest.raises(ChecksumError) as detected:
            await client.get(b"damaged")
        assert "damaged" in detected.value.message
        assert detected.value.key == b"damaged"
        assert detected.value.code == "checksum"
        assert (await client.get(b"healthy")).value == b"fine"
        with pytest.raises(ChecksumError):
            await client.get(b"damaged")  # still detected; nothing was "repaired" into garbage
    storage.close()


async def test_a_write_to_a_damaged_key_is_refused_and_leaves_the_record_alone(tmp_path):
    """A put (or delete) on a key whose record fails its checksum is refused with `checksum`:
    the node does not act on a record it can't trust, and the record stays as found."""
    storage = populated_storage(tmp_path / "db")
    flip_byte(storage, "keys", b"damaged", -1)
    damaged = storage.get("keys", b"damaged")
    async with serving_node(storage) as (node, address), Client(address) as client:
        with pytest.raises(ChecksumError):
            await client.put(b"damaged", b"new")
        with pytest.raises(ChecksumError):
            await client.delete(b"damaged")
        assert node.engine.writes_applied == 0
    assert storage.get("keys", b"damaged") == damaged
    storage.close()


async def test_a_scan_over_a_damaged_key_fails_naming_it(tmp_path):
    """A scan whose range holds a damaged record fails with `checksum` naming the key,
    rather than skipping it; a scan of a range without it succeeds."""
    storage = populated_storage(tmp_path / "db")
    flip_byte(storage, "keys", b"damaged", -1)
    async with serving_node(storage) as (_, address), Client(address) as client:
        with pytest.raises(ChecksumError) as detected:
            await client.scan_page(prefix=b"d")
        assert "damaged" in detected.value.message
        page = await client.scan_page(prefix=b"h")
        assert [item.key for item in page.items] == [b"healthy"]
    storage.close()


async def test_a_flipped_byte_in_a_table_row_fails_sync_and_table_get_naming_the_table(tmp_path):
    """A damaged row record makes table_get of that row and a sync that covers it fail with
    `checksum` naming the table's key; other rows, and syncs past it, are fine."""
    storage = populated_storage(tmp_path / "db")
    second_row = records.append_row_id(2)
    flip_byte(storage, "rows", records.row_record_key(b"inbox", second_row), -1)
    async with serving_node(storage) as (_, address), Client(address) as client:
        with pytest.raises(ChecksumError) as detected:
            await client.table_get(b"inbox", second_row)
        assert "inbox" in detected.value.message
        with pytest.raises(ChecksumError) as detected:
            await client.sync(b"inbox", 0)
        assert "inbox" in detected.value.message
        assert (await client.table_get(b"inbox", records.append_row_id(1))).value == b"first"
        after = await client.sync(b"inbox", 2)
        assert [row.value for row in after.rows] == [b"third"]
        with pytest.raises(ChecksumError):
            await client.table_rows(b"inbox")
    storage.close()


async def test_a_flipped_byte_in_a_table_change_record_fails_sync(tmp_path):
    """The change index is checked too: a damaged row_changes record fails the sync
    covering it with `checksum`."""
    storage = populated_storage(tmp_path / "db")
    flip_byte(storage, "row_changes", records.change_record_key(b"inbox", 3), -1)
    async with serving_node(storage) as (_, address), Client(address) as client:
        with pytest.raises(ChecksumError) as detected:
            await client.sync(b"inbox", 0)
        assert "inbox" in detected.value.message
        assert (await client.sync(b"inbox", 3)).rows == []
    storage.close()


def test_decode_record_rejects_truncation_and_accepts_only_its_own_checksum():
    """records.decode_record: a good record decodes; a record shorter than its checksum,
    or with any single byte flipped, raises ChecksumError naming the column family and key."""
    stored = records.encode_record([3, "kv", b"value"])
    assert records.decode_record(stored, column_family=Family.KEYS, key=b"k") == [3, "kv", b"value"]
    with pytest.raises(ChecksumError, match="truncated"):
        records.decode_record(stored[:3], column_family=Family.KEYS, key=b"k")
    for offset in range(len(stored)):
        damaged = bytearray(stored)
        damaged[offset] ^= 0x80
        with pytest.raises(ChecksumError, match=r"keys/b'k'"):
            records.decode_record(bytes(damaged), column_family=Family.KEYS, key=b"k")
