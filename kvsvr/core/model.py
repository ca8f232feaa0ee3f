"""The two data models, as deterministic mutations on a key's state.

Theory. Every key has a state `(version, kind, value)`; version 0 means
never written. Every mutation makes exactly one new version: version v is
the result of applying the mutation chosen for v to the state at v-1. A
mutation needs nothing but that state and its own bytes (no clock, no
randomness), so every replica that applies the same mutations in order
holds the same state (invariant 4).

- Key-Value: `Put`, `Delete`. A delete leaves a tombstone at a new version,
  so versions never go backwards (R3).
- Key-Table: the key holds rows. `TableWrite` puts and deletes rows in one
  version; `Append` adds one row whose id is the new version. Each row
  remembers the version that last changed it, so `sync(key, since)` can
  return exactly the rows changed after `since`.

Conditions (`expected_version`, `expected_value`) are checked against the
state before the mutation, by `check`, and never inside `apply`: the
replicated engine checks them on the coordinator and sends only mutations
that passed (docs/protocol-rules.md, write step 3). `apply` is unconditional.
"""

from __future__ import annotations

import dataclasses

from kvsvr.core import records
from kvsvr.protocol.errors import BadRequest, ConditionFailed, NotFound
from kvsvr.storage import Family

KIND_KEY_VALUE = "kv"
KIND_TABLE = "table"


@dataclasses.dataclass(frozen=True, slots=True)
class KeyState:
    version: int = 0
    kind: str | None = None  # None until first written
    value: bytes | None = None  # a Key-Value key's value; None: absent or tombstone

    def to_record(self) -> bytes:
        return records.encode_record([self.version, self.kind, self.value])

    @classmethod
    def from_record(cls, stored: bytes, key: bytes) -> KeyState:
        body = records.decode_record(stored, column_family=Family.KEYS, key=key)
        assert isinstance(body, list) and len(body) == 3, f"malformed key state for {key!r}"
        version, kind, value = body
        return cls(version, kind, value)


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    version: int  # the version that last changed this row
    value: bytes | None  # None: deleted at `version`

    def to_record(self) -> bytes:
        return records.encode_record([self.version, self.value])

    @classmethod
    def from_record(cls, stored: bytes, key: bytes) -> Row:
        body = records.decode_record(stored, column_family=Family.ROWS, key=key)
        assert isinstance(body, list) and len(body) == 2, f"malformed row for {key!r}"
        return cls(body[0], body[1])


_UNSET = object()


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """What must hold before a mutation applies; all given parts must hold."""

    expected_version: int | None = None
    # bytes: the value must equal it; None: the key must hold no value;
    # _UNSET (the default): the value is not checked.
    expected_value: object = _UNSET

    @property
    def checks_value(self) -> bool:
        return self.expected_value is not _UNSET

    @property
    def is_empty(self) -> bool:
        return self.expected_version is None and not self.checks_value


NO_CONDITION = Condition()


@dataclasses.dataclass(frozen=True, slots=True)
class Put:
    value: bytes
    kind = KIND_KEY_VALUE


@dataclasses.dataclass(frozen=True, slots=True)
class Delete:
    kind = KIND_KEY_VALUE


@dataclasses.dataclass(frozen=True, slots=True)
class TableWrite:
    puts: tuple[tuple[bytes, bytes], ...]
    deletes: tuple[bytes, ...]
    kind = KIND_TABLE


@dataclasses.dataclass(frozen=True, slots=True)
class Append:
    value: bytes
    kind = KIND_TABLE


Mutation = Put | Delete | TableWrite | Append


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    """A mutation's effect: the new key state and the rows it changed."""

    state: KeyState
    row_changes: tuple[tuple[bytes, Row], ...]
    existed: bool  # whether the key held a value before (for Delete's answer)


def require_kind(key: bytes, state: KeyState, kind: str) -> None:
    if state.kind is not None and state.kind != kind:
        held = "a table" if state.kind == KIND_TABLE else "a key-value value"
        raise BadRequest(f"key {key!r} holds {held}; use the {state.kind} operations on it", key=key)


def check(key: bytes, state: KeyState, mutation: Mutation, condition: Condition) -> None:
    """Raise BadRequest for a mutation of the wrong kind, ConditionFailed if `condition` fails."""
    require_kind(key, state, mutation.kind)
    if condition.expected_version is not None and condition.expected_version != state.version:
        raise ConditionFailed(
            f"expected version {condition.expected_version} of {key!r}, found {state.version}",
            version=state.version,
            key=key,
        )
    if condition.checks_value and condition.expected_value != state.value:
        raise ConditionFailed(
            f"value of {key!r} at version {state.version} is not the expected one",
            version=state.version,
            key=key,
        )


def apply(state: KeyState, mutation: Mutation) -> Applied:
    """The state after `mutation`, at version state.version + 1. Unconditional."""
    version = state.version + 1
    existed = state.value is not None
    match mutation:
        case Put(value=value):
            return Applied(KeyState(version, KIND_KEY_VALUE, value), (), existed)
        case Delete():
            return Applied(KeyState(version, KIND_KEY_VALUE, None), (), existed)
        case TableWrite(puts=puts, deletes=deletes):
            changes = {row_id: Row(version, value) for row_id, value in puts}
            for row_id in deletes:
                changes[row_id] = Row(version, None)
            return Applied(KeyState(version, KIND_TABLE, None), tuple(changes.items()), False)
        case Append(value=value):
            row = (records.append_row_id(version), Row(version, value))
            return Applied(KeyState(version, KIND_TABLE, None), (row,), False)
    raise AssertionError(f"unknown mutation {mutation!r}")


def value_or_not_found(key: bytes, state: KeyState) -> KeyState:
    """The state of a Key-Value key that holds a value, or NotFound with its version."""
    require_kind(key, state, KIND_KEY_VALUE)
    if state.value is None:
        raise NotFound(f"key {key!r} not found", version=state.version, key=key)
    return state


def get_answer(key: bytes, state: KeyState) -> dict:
    """The answer to a Get of `key` in `state`: its value and version, or NotFound."""
    found = value_or_not_found(key, state)
    return {"value": found.value, "version": found.version}


def mutation_to_wire(mutation: Mutation) -> list:
    """A mutation as plain CBOR-able data (for payloads in the replication log)."""
    match mutation:
        case Put(value=value):
            return ["put", value]
        case Delete():
            return ["delete"]
        case TableWrite(puts=puts, deletes=deletes):
            return ["table_write", [list(pair) for pair in puts], list(deletes)]
        case Append(value=value):
            return ["append", value]
    raise AssertionError(f"unknown mutation {mutation!r}")


def mutation_from_wire(body: object) -> Mutation:
    """The inverse of mutation_to_wire; a malformed body is an AssertionError
    (payloads are checksummed, so a bad one here is a bug, not bad input)."""
    assert isinstance(body, list) and body, f"malformed mutation {body!r}"
    match body:
        case ["put", bytes() as value]:
            return Put(value)
        case ["delete"]:
            return Delete()
        case ["table_write", list() as puts, list() as deletes]:
            return TableWrite(tuple((row, value) for row, value in puts), tuple(deletes))
        case ["append", bytes() as value]:
            return Append(value)
    raise AssertionError(f"malformed mutation {body!r}")
