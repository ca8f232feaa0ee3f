"""The single-node engine: requests in, results and write batches out.

Theory of operation. The engine is sans-IO: it never awaits, sleeps or
touches a socket. It executes one typed request at a time against the
storage, and keeps the bookkeeping that group commit needs:

- Writes are applied at once to an in-memory overlay (`_dirty`, the newest
  state of each key written but not yet synced) and their records are
  appended to the batch being filled, *generation* `open_generation`. A
  write's answer is released only once its generation is synced
  (`Outcome.generation`), so nothing is acknowledged before it is durable.
- The shell's committer calls `take_batch()` to cut the open batch (which
  starts the next generation), writes it with one sync off the event loop,
  then calls `batch_synced(generation)`, which drops the overlay entries
  that batch made durable.
- A read of a key with an unsynced write waits for that write's
  generation: it may not return a state that a crash could still undo. A
  Key-Value read answers from the overlay state it saw (linearizable: the
  write it sees is ordered before it and is durable when it is answered);
  table reads and scans run against the storage once it is synced. A
  write refused on such a state (a failed condition, a kind mismatch)
  waits the same way: its answer reveals that state.

Bad input raises a KvError (answered, nothing changed); a broken invariant
is an AssertionError.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from kvsvr.core import keyspace, model
from kvsvr.core.requests import Get, Ping, Request, Scan, Status, Sync, TableGet, TableRows, Write
from kvsvr.protocol.errors import KvError, Overloaded
from kvsvr.protocol.limits import Limits
from kvsvr.storage import Storage
from kvsvr.storage import Write as StorageWrite

Result = dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """An answer, to be sent once `generation` is synced (0: at once).

    `result` is the answer itself, or a function that computes it after the
    generation is synced (reads that must see the synced storage).
    """

    result: Result | Callable[[], Result]
    generation: int = 0


class Engine:
    def __init__(self, storage: Storage, limits: Limits):
        self.storage = storage
        self.limits = limits
        self.keyspace = keyspace.Keyspace(storage)
        self.open_generation = 1
        self.synced_generation = 0
        self._dirty: dict[bytes, tuple[model.KeyState, int]] = {}
        self._pending_writes: list[StorageWrite] = []
        self._pending_keys: list[bytes] = []
        self._keys_by_generation: dict[int, list[bytes]] = {}
        self._latest_write_generation = 0
        self.commit_queue_ops = 0  # records cut or open, not yet synced
        self.writes_applied = 0
        self.batches_synced = 0

    # -- the committer's side ------------------------------------------------

    def take_batch(self) -> tuple[int, list[StorageWrite]] | None:
        """Cut the open batch for syncing; None if it is empty."""
        if not self._pending_writes:
            return None
        generation = self.open_generation
        writes = self._pending_writes
        self._keys_by_generation[generation] = self._pending_keys
        self._pending_writes = []
        self._pending_keys = []
        self.open_generation += 1
        return generation, writes

    def batch_synced(self, generation: int, record_count: int) -> None:
        assert generation == self.synced_generation + 1, "batches must sync in order"
        self.synced_generation = generation
        self.batches_synced += 1
        self.commit_queue_ops -= record_count
        assert self.commit_queue_ops >= 0
        for key in self._keys_by_generation.pop(generation):
            entry = self._dirty.get(key)
            if entry is not None and entry[1] == generation:
                del self._dirty[key]

    @property
    def has_pending_writes(self) -> bool:
        return bool(self._pending_writes)

    # -- requests ------------------------------------------------------------

    def execute(self, request: Request) -> Outcome:
        match request:
            case Get(key=key):
                return self._get(key)
            case Write():
                return self._write(request)
            case Sync() | TableGet() | TableRows():
                return self._after_key_synced(request.key, lambda: self.keyspace.read(request))
            case Scan():
                return self._after_all_synced(lambda: self.keyspace.read(request))
            case Status():
                return Outcome(self.statistics())
            case Ping():
                return Outcome({})
        raise AssertionError(f"unhandled request {request!r}")

    def statistics(self) -> Result:
        return {
            "writes_applied": self.writes_applied,
            "batches_synced": self.batches_synced,
            "commit_queue_ops": self.commit_queue_ops,
            "unsynced_keys": len(self._dirty),
        }

    def key_state(self, key: bytes) -> model.KeyState:
        """The newest state of `key`, synced or not."""
        entry = self._dirty.get(key)
        if entry is not None:
            return entry[0]
        return self.keyspace.key_state(key)

    def _get(self, key: bytes) -> Outcome:
        entry = self._dirty.get(key)
        if entry is None:
            return Outcome(model.get_answer(key, self.keyspace.key_state(key)))
        state, generation = entry
        return Outcome(lambda: model.get_answer(key, state), generation)

    def _write(self, request: Write) -> Outcome:
        key = request.key
        if self.commit_queue_ops >= self.limits.commit_queue_ops_max:
            raise Overloaded(
                f"{self.commit_queue_ops} records are waiting for commit; retry later", key=key
            )
        state = self.key_state(key)
        try:
            model.check(key, state, request.mutation, request.condition)
        except KvError as refusal:
            # A refusal judged on a state not yet synced reveals that state
            # (a failed condition carries its version): like a read of the
            # key, it waits for that state's generation (docs/protocol-rules.md R7).
            entry = self._dirty.get(key)
            if entry is None:
                raise
            return Outcome(functools.partial(_raise, refusal), entry[1])
        applied = model.apply(state, request.mutation)
        new_state = applied.state
        writes = keyspace.applied_writes(key, applied)
        generation = self.open_generation
        self._pending_writes.extend(writes)
        self._pending_keys.append(key)
        self._dirty[key] = (new_state, generation)
        self._latest_write_generation = generation
        self.commit_queue_ops += len(writes)
        self.writes_applied += 1
        result: Result = {"version": new_state.version}
        if isinstance(request.mutation, model.Delete):
            result["existed"] = applied.existed
        return Outcome(result, generation)

    def _after_key_synced(self, key: bytes, read: Callable[[], Result]) -> Outcome:
        entry = self._dirty.get(key)
        if entry is None:
            return Outcome(read())
        return Outcome(read, entry[1])

    def _after_all_synced(self, read: Callable[[], Result]) -> Outcome:
        if self._latest_write_generation <= self.synced_generation:
            return Outcome(read())
        return Outcome(read, self._latest_write_generation)


def _raise(error: KvError) -> Result:
    raise error
