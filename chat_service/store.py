"""Talking to the store: reads with versions, retries with deadlines, write-once.

Theory of operation. The store answers every call one of three ways
(kvsvr/protocol/errors.py): done; definitely not done (`ConditionFailed`,
`NotFound`, `Unavailable`, `Overloaded`, ...); or `Timeout`, *outcome
unknown*. chat_service turns them into two rules:

- a read, or a write that is idempotent by construction, is simply retried
  until it answers or its deadline passes (`with_retries`);
- a write that must happen at most once is made conditional, so the store
  itself refuses a second copy: create-if-absent (`put_once`,
  `expected_version=0`) for things written once, and `expected_version`
  on a version just read for everything that moves forward. After a
  timeout the writer reads again and sees whether its write landed; a
  conditional write can't land later at a version it no longer matches.

What reaches an HTTP client: `StoreUnavailable` (503). When a write's
outcome stayed unknown until the deadline, its message says so, and the
operation is safe to retry with the same identifiers.

Concurrent store calls run as tasks of a trio nursery, and trio wraps what
a nursery's tasks raise in an `ExceptionGroup` (strict exception groups,
the default since trio 0.25). The callers here handle *a* store error
(retry it, answer 503), so every such nursery sits inside
`one_store_error()`, which turns a group made only of store errors back
into one of them.
"""

from __future__ import annotations

import contextlib
import math
import random

import trio

from kvsvr.client import Client
from kvsvr.protocol.errors import (
    ConditionFailed,
    KvError,
    NotFound,
    Overloaded,
    Timeout,
    Unavailable,
)

# Backoff between retries of an unavailable or overloaded store: doubling
# from the minimum, with jitter so instances don't retry in lockstep.
RETRY_BACKOFF_MIN_SECONDS = 0.02
RETRY_BACKOFF_MAX_SECONDS = 0.5
RETRYABLE = (Timeout, Unavailable, Overloaded)


class StoreUnavailable(Exception):
    """The store did not answer in time; for a write, maybe it happened, maybe not."""

    def __init__(self, message: str, *, outcome_unknown: bool = False):
        super().__init__(message)
        self.message = message
        self.outcome_unknown = outcome_unknown


class MessageIdConflict(Exception):
    """A write-once key already holds something different."""


def backoff_seconds(attempt: int) -> float:
    ceiling = min(RETRY_BACKOFF_MAX_SECONDS, RETRY_BACKOFF_MIN_SECONDS * 2 ** min(attempt, 10))
    return ceiling * (0.5 + random.random() / 2)


def deadline_after(seconds: float) -> float:
    return trio.current_time() + seconds if math.isfinite(seconds) else math.inf


async def with_retries(operation, *, what: str, deadline: float):
    """Await `operation()` until it answers; retry timeouts, `unavailable` and
    `overloaded` with backoff until `deadline`. Only for idempotent operations."""
    attempt = 0
    while True:
        try:
            return await operation()
        except RETRYABLE as error:
            if trio.current_time() >= deadline:
                raise StoreUnavailable(
                    f"{what}: the store did not answer ({error.code}: {error.message})",
                    outcome_unknown=isinstance(error, Timeout),
                ) from None
            await trio.sleep(min(backoff_seconds(attempt), max(0.0, deadline - trio.current_time())))
            attempt += 1


@contextlib.contextmanager
def one_store_error():
    """Let a nursery's store errors out as a single exception.

    A group whose leaves are all store errors (`KvError`, `StoreUnavailable`)
    is replaced by the one that tells the most: a `StoreUnavailable` whose
    outcome is unknown, else any `StoreUnavailable`, else the first
    `KvError`. A group holding anything else (a broken invariant, a
    cancellation) is raised unchanged.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if not leaves or not all(isinstance(leaf, (KvError, StoreUnavailable))
                                 for leaf in leaves):
            raise
        unavailable = [leaf for leaf in leaves if isinstance(leaf, StoreUnavailable)]
        unknown = [leaf for leaf in unavailable if leaf.outcome_unknown]
        raise (unknown or unavailable or leaves)[0] from None


def _leaves(group: BaseExceptionGroup):
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error


async def read_value(client: Client, key: bytes) -> tuple[bytes | None, int]:
    """A Key-Value key's value (None: no value) and version (0: never written)."""
    try:
        result = await client.call("get", key, {"key": key})
    except NotFound as error:
        return None, error.version or 0
    return result["value"], result["version"]


async def table_version(client: Client, key: bytes, *, stale: bool = False) -> int:
    """A table's version, without its rows (a sync from past any version)."""
    return (await client.sync(key, since=2**62, stale=stale)).version


async def table_row_and_version(
    client: Client, key: bytes, row_id: bytes
) -> tuple[bytes | None, int]:
    """One row's value (None: absent) and the table's version, read together,
    so a conditional write on that version also holds on that row."""
    body = {"key": key, "start_row": row_id, "limit": 1}
    answer = await client.call("table_rows", key, body)
    rows = answer["rows"]
    value = rows[0][2] if rows and rows[0][0] == row_id else None
    return value, answer["table_version"]


async def read_all_rows(client: Client, key: bytes) -> dict[bytes, bytes]:
    """Every live row of a table (paged)."""
    rows: dict[bytes, bytes] = {}
    start_row = None
    while True:
        page = await client.table_rows(key, start_row=start_row)
        rows.update((row.row_id, row.value) for row in page.items)
        if page.resume is None:
            return rows
        start_row = page.resume


async def put_once(client: Client, key: bytes, value: bytes, *, same, deadline: float) -> bytes:
    """Create `key` holding `value` unless it exists; returns what it holds.

    Safe to retry and to race: `expected_version=0` lets only the first
    write land. When the key already holds something, `same(existing)`
    says whether that is this write from an earlier try (fine) or another
    one (`MessageIdConflict`).
    """
    attempt = 0
    while True:
        try:
            await client.put(key, value, expected_version=0)
            return value
        except ConditionFailed:
            existing, _ = await with_retries(
                lambda: read_value(client, key), what="read back", deadline=deadline
            )
            if existing is None:  # deleted: chat never deletes these keys
                raise AssertionError(f"write-once key {key!r} was deleted") from None
            if not same(existing):
                raise MessageIdConflict(
                    f"{key.decode(errors='replace')} holds another record"
                ) from None
            return existing
        except RETRYABLE as error:
            # A timed-out create either landed (the retry then fails its
            # condition and reads it back) or didn't (the retry creates it).
            if trio.current_time() >= deadline:
                raise StoreUnavailable(
                    f"storing {key.decode(errors='replace')}: {error.message}",
                    outcome_unknown=isinstance(error, Timeout),
                ) from None
            await trio.sleep(backoff_seconds(attempt))
            attempt += 1


__all__ = [
    "KvError",
    "MessageIdConflict",
    "StoreUnavailable",
    "one_store_error",
    "put_once",
    "read_all_rows",
    "read_value",
    "table_row_and_version",
    "table_version",
    "with_retries",
]
