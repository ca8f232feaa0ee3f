"""A step's writes, gathered and written as one batch.

Theory. A step of the core (one request, message or tick) writes several
records: a payload, a vote, a cursor, an applied state, the consensus
record, sometimes the same key twice. Written one call at a time, each is
its own storage batch; gathered, the step costs one. `StepWrites` stands
between the core and its storage: `write` only records, `get` answers from
what this step wrote before asking the storage, and `flush` (called when
the step's effects are taken, before any of them leaves) writes everything
as one unsynced batch, in order. A scan flushes first, so a range read
sees the step's own writes without merging. The owner may hand it a
`before_flush` that adds writes it deferred to the end of the step (the
core writes each changed consensus record once per step, however often
the step changed it).

Crash semantics only get stronger: a batch is atomic, so a crash keeps all
of a step's writes or none, where before it could keep a prefix; every
rule that relies on "a crash keeps a prefix of the writes" (a cursor
written after its records, a Decision logged after the record that holds
it) still holds across steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvsvr.storage import Storage, Write

_ABSENT = object()


class StepWrites:
    def __init__(self, storage: Storage, before_flush: Callable[[], None] = lambda: None):
        self.storage = storage
        self._before_flush = before_flush  # the owner's last writes of the step
        self._pending: list[Write] = []
        self._latest: dict[tuple[str, bytes], bytes | None] = {}
        # What reached the storage, for status: records, and batches of them.
        self.records_written = 0
        self.batches_written = 0

    def write(self, writes: Sequence[Write], sync: bool = False) -> None:
        assert not sync, "a step never syncs: its shell does, after the step"
        for column_family, key, value in writes:
            self._pending.append((column_family, key, value))
            self._latest[(column_family, key)] = value

    def get(self, column_family: str, key: bytes) -> bytes | None:
        found = self._latest.get((column_family, key), _ABSENT)
        if found is not _ABSENT:
            return found
        return self.storage.get(column_family, key)

    def scan(self, column_family: str, start: bytes, end: bytes | None, limit: int):
        self.flush()
        return self.storage.scan(column_family, start, end, limit)

    def flush(self) -> bool:
        """Write what the step gathered; whether there was anything."""
        self._before_flush()
        if not self._pending:
            return False
        pending, self._pending = self._pending, []
        self._latest.clear()
        self.storage.write(pending, sync=False)
        self.records_written += len(pending)
        self.batches_written += 1
        return True
