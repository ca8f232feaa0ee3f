"""Client requests: checked on arrival, turned into typed values.

Theory. A request arrives as a decoded CBOR map, which is bad input until
proven otherwise: every field's presence, type and size is checked here,
before anything touches the engine, and a failure is answered
`bad_request` or `too_large` with the field named. What leaves this
module is a frozen dataclass the engine can trust.

Wire shape (docs/protocol.md): `{"id": int, "op": str, ...fields}`.
"""

from __future__ import annotations

import dataclasses

from kvsvr.core import model
from kvsvr.core.records import prefix_end
from kvsvr.protocol.errors import BadRequest, TooLarge
from kvsvr.protocol.limits import Limits


@dataclasses.dataclass(frozen=True, slots=True)
class Get:
    key: bytes
    stale: bool = False  # answer from the serving node's own state, without a quorum


@dataclasses.dataclass(frozen=True, slots=True)
class Write:
    key: bytes
    mutation: model.Mutation
    condition: model.Condition


@dataclasses.dataclass(frozen=True, slots=True)
class Scan:
    start: bytes  # inclusive
    end: bytes | None  # exclusive; None: no upper bound
    limit: int


@dataclasses.dataclass(frozen=True, slots=True)
class Sync:
    key: bytes
    since: int
    limit: int
    stale: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class TableGet:
    key: bytes
    row_id: bytes
    stale: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class TableRows:
    key: bytes
    start_row: bytes
    limit: int
    stale: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    pass


Request = Get | Write | Scan | Sync | TableGet | TableRows | Status | Ping


def parse_request(body: dict, limits: Limits) -> Request:
    """Turn a request map (its id already taken out) into a typed request."""
    op = body.get("op")
    if not isinstance(op, str):
        raise BadRequest("request has no 'op' string")
    parser = _PARSERS.get(op)
    if parser is None:
        raise BadRequest(f"unknown operation {op!r}; known: {', '.join(sorted(_PARSERS))}")
    return parser(_Fields(body, op, limits))


class _Fields:
    """Typed access to a request's fields, with errors that name the field."""

    def __init__(self, body: dict, op: str, limits: Limits):
        self.body = body
        self.op = op
        self.limits = limits

    def present(self, name: str) -> bool:
        return name in self.body

    def bytes(self, name: str, size_max_bytes: int, *, required: bool = True) -> bytes | None:
        value = self.body.get(name)
        if value is None:
            if required:
                raise BadRequest(f"{self.op}: field {name!r} (bytes) is required")
            return None
        if not isinstance(value, bytes):
            raise BadRequest(f"{self.op}: field {name!r} must be bytes, not {type(value).__name__}")
        if len(value) > size_max_bytes:
            raise TooLarge(f"{self.op}: field {name!r} is {len(value)} bytes, limit {size_max_bytes}")
        return value

    def key(self, name: str = "key") -> bytes:
        key = self.bytes(name, self.limits.key_size_max_bytes)
        if not key:
            raise BadRequest(f"{self.op}: field {name!r} must not be empty")
        return key

    def value(self, name: str = "value") -> bytes:
        return self.bytes(name, self.limits.value_size_max_bytes)

    def integer(self, name: str, *, default: int | None = None, minimum: int = 0) -> int:
        value = self.body.get(name, default)
        if value is None:
            raise BadRequest(f"{self.op}: field {name!r} (integer) is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{self.op}: field {name!r} must be an integer")
        if value < minimum or value >= 2**63:
            raise BadRequest(f"{self.op}: field {name!r} must be in [{minimum}, 2**63)")
        return value

    def flag(self, name: str) -> bool:
        value = self.body.get(name, False)
        if not isinstance(value, bool):
            raise BadRequest(f"{self.op}: field {name!r} must be true or false")
        return value

    def limit(self) -> int:
        items_max = self.limits.scan_items_max
        limit = self.integer("limit", default=items_max, minimum=1)
        return min(limit, items_max)

    def condition(self) -> model.Condition:
        expected_version = None
        if self.present("expected_version"):
            expected_version = self.integer("expected_version")
        if not self.present("expected_value"):
            return model.Condition(expected_version)
        expected_value = self.body["expected_value"]
        if expected_value is not None and not isinstance(expected_value, bytes):
            raise BadRequest(f"{self.op}: field 'expected_value' must be bytes or null (absent)")
        return model.Condition(expected_version, expected_value)

    def list(self, name: str) -> list:
        value = self.body.get(name, [])
        if not isinstance(value, list):
            raise BadRequest(f"{self.op}: field {name!r} must be a list")
        if len(value) > self.limits.table_batch_rows_max:
            raise TooLarge(
                f"{self.op}: {len(value)} items in {name!r}, limit {self.limits.table_batch_rows_max}"
            )
        return value

    def row_id(self, value: object, where: str) -> bytes:
        if not isinstance(value, bytes) or not value:
            raise BadRequest(f"{self.op}: {where} must be non-empty bytes")
        if len(value) > self.limits.key_size_max_bytes:
            raise TooLarge(f"{self.op}: {where} is over {self.limits.key_size_max_bytes} bytes")
        return value


def _parse_get(fields: _Fields) -> Request:
    return Get(fields.key(), fields.flag("stale"))


def _parse_put(fields: _Fields) -> Request:
    return Write(fields.key(), model.Put(fields.value()), fields.condition())


def _parse_delete(fields: _Fields) -> Request:
    return Write(fields.key(), model.Delete(), fields.condition())


def _parse_table_write(fields: _Fields) -> Request:
    key = fields.key()
    puts = []
    for index, pair in enumerate(fields.list("puts")):
        if not isinstance(pair, list) or len(pair) != 2:
            raise BadRequest(f"table_write: puts[{index}] must be [row_id, value]")
        row_id = fields.row_id(pair[0], f"puts[{index}] row id")
        value = pair[1]
        if not isinstance(value, bytes):
            raise BadRequest(f"table_write: puts[{index}] value must be bytes")
        if len(value) > fields.limits.value_size_max_bytes:
            raise TooLarge(f"table_write: puts[{index}] value is over the value size limit")
        puts.append((row_id, value))
    deletes = [
        fields.row_id(row_id, f"deletes[{index}]")
        for index, row_id in enumerate(fields.list("deletes"))
    ]
    if not puts and not deletes:
        raise BadRequest("table_write: nothing to write (puts and deletes are both empty)")
    if len(puts) + len(deletes) > fields.limits.table_batch_rows_max:
        raise TooLarge(f"table_write: over {fields.limits.table_batch_rows_max} rows in one batch")
    condition = fields.condition()
    if condition.checks_value:
        raise BadRequest("table_write: a table has no value to compare; use expected_version")
    return Write(key, model.TableWrite(tuple(puts), tuple(deletes)), condition)


def _parse_append(fields: _Fields) -> Request:
    return Write(fields.key(), model.Append(fields.value()), model.NO_CONDITION)


def _parse_scan(fields: _Fields) -> Request:
    key_max = fields.limits.key_size_max_bytes
    prefix = fields.bytes("prefix", key_max, required=False)
    start = fields.bytes("start", key_max, required=False)
    end = fields.bytes("end", key_max, required=False)
    resume = fields.bytes("resume", key_max + 1, required=False)
    if prefix is not None and (start is not None or end is not None):
        raise BadRequest("scan: give either 'prefix' or 'start'/'end', not both")
    if prefix is not None:
        start, end = prefix, prefix_end(prefix)
    start = start or b""
    if resume is not None:
        if resume < start or (end is not None and resume > end):
            raise BadRequest("scan: 'resume' token is outside the scanned range")
        start = resume
    return Scan(start, end, fields.limit())


def _parse_sync(fields: _Fields) -> Request:
    return Sync(
        fields.key(), fields.integer("since", default=0), fields.limit(), fields.flag("stale")
    )


def _parse_table_get(fields: _Fields) -> Request:
    key = fields.key()
    row_id = fields.row_id(fields.body.get("row_id"), "field 'row_id'")
    return TableGet(key, row_id, fields.flag("stale"))


def _parse_table_rows(fields: _Fields) -> Request:
    key = fields.key()
    start_row = fields.bytes("start_row", fields.limits.key_size_max_bytes + 1, required=False)
    return TableRows(key, start_row or b"", fields.limit(), fields.flag("stale"))


_PARSERS = {
    "get": _parse_get,
    "put": _parse_put,
    "delete": _parse_delete,
    "table_write": _parse_table_write,
    "append": _parse_append,
    "scan": _parse_scan,
    "sync": _parse_sync,
    "table_get": _parse_table_get,
    "table_rows": _parse_table_rows,
    "status": lambda fields: Status(),
    "ping": lambda fields: Ping(),
}

OPERATIONS = tuple(_PARSERS)
WRITE_OPERATIONS = frozenset({"put", "delete", "table_write", "append"})
