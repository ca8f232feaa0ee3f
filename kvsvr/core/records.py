"""Stored records: a crc32c in front of a CBOR body, checked on every read.

Theory. RocksDB checksums its own blocks, but a record can still be wrong
by the time it reaches us (a bug that wrote the wrong bytes, a byte flipped
in the page cache, a file edited by hand). So every value this node stores
is `crc32c(body) || body`, big-endian, and every read verifies it before
decoding. A mismatch raises ChecksumError naming the column family and the
key: the node never acts on a record whose checksum fails (invariant 5).

Composite keys (a table's rows, its change index) are built so that one
table's records are contiguous and ordered: `u16 length || key || suffix`.
"""

from __future__ import annotations

import struct

import cbor2
import crc32c

from kvsvr.protocol.errors import ChecksumError
from kvsvr.storage import Family

_CRC = struct.Struct(">I")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")


def encode_record(body: object) -> bytes:
    payload = cbor2.dumps(body)
    return _CRC.pack(crc32c.crc32c(payload)) + payload


def decode_record(stored: bytes, *, column_family: Family, key: bytes) -> object:
    """Verify and decode one stored record, or raise ChecksumError naming it."""
    if len(stored) < _CRC.size:
        raise ChecksumError(
            f"record {column_family}/{key!r} is truncated ({len(stored)} bytes)", key=key
        )
    (expected,) = _CRC.unpack_from(stored)
    payload = memoryview(stored)[_CRC.size :]
    if crc32c.crc32c(payload) != expected:
        raise ChecksumError(f"checksum mismatch in record {column_family}/{key!r}", key=key)
    try:
        return cbor2.loads(payload)
    except Exception as error:  # a matching crc over undecodable bytes: written wrong
        raise ChecksumError(
            f"record {column_family}/{key!r} passed its checksum but does not decode: {error}",
            key=key,
        ) from error


def table_prefix(key: bytes) -> bytes:
    """The prefix every composite record of `key` starts with."""
    return _U16.pack(len(key)) + key


def row_record_key(key: bytes, row_id: bytes) -> bytes:
    return table_prefix(key) + row_id


def change_record_key(key: bytes, version: int) -> bytes:
    return table_prefix(key) + _U64.pack(version)


def version_from_change_key(prefix_length: int, record_key: bytes) -> int:
    return _U64.unpack_from(record_key, prefix_length)[0]


def append_row_id(version: int) -> bytes:
    """An appended row's id is its version, so ids sort in append order."""
    return _U64.pack(version)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
