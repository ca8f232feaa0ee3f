"""What the clients do: register and table-append operations, recorded as a history.

Theory of operation. A workload draws operations, runs each through the
store and says how it ended, in the checker's terms (docs/checker.md):
`ok` with its result, `fail` when the store said it certainly did not take
effect (`unavailable`, `overloaded`, `condition_failed`, `not_found`), and
`info` when nobody knows (`timeout`, a broken connection, any other
indeterminate error). Values are unique per run, so every read names the
write it saw.

Routing. Every client process holds one connection per node and sends
each operation to a node drawn at random, not to the key's preferred
coordinator: two coordinators contend for the same key, and a read may be
served by a node that is behind. When a node answers `unavailable` (it
reaches no majority) or cannot be reached, the operation goes on to the
next node, within its one deadline: a definite refusal changed nothing, so
trying elsewhere is still one operation.

Keys rotate. Each of a few key slots is used for a bounded number of
operations and then replaced by a fresh key, so every key's history stays
small enough for the checker (its search grows with the operations that
overlap in time, most of all timed-out writes that nobody read back).

Refused operations. The checker reads a failed compare-and-set as an
observation: it saw a value other than the one it expected. That is what a
`condition_failed` answer means, and only that: a cas the store refused
without looking at the value (`unavailable`, `overloaded`, or every node
refused until the deadline passed) never happened and saw nothing.
Recorded as `fail` it would claim the register was not at its expected
value at a moment it was, a false "not linearizable"; recorded as `info` it
would be sound but cost the search dearly. So such an operation is *left
out* of the history (`Outcome.left_out`); workloads name the functions
that may be (`may_be_left_out`), and the runner holds their invocation
back until the outcome is known. The runner still counts them for
availability and draws them in the plots.

Besides the history, every acknowledged write and every read is noted with
the version the store gave it (`Observation`): checks.py uses them to
prove that no acknowledged write was lost and that no version holds two
values.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import Any

import crc32c
import trio

from kvsvr.client import Client
from kvsvr.protocol.errors import KvError

WORKLOADS = ("register", "table-append")
ROUTINGS = ("random", "preferred")
STORE_KEY_PREFIX = b"jepsen/"
DEFINITE_CODES = {"unavailable", "overloaded", "condition_failed", "not_found", "bad_request", "too_large"}
# Codes after which the same operation may go to another node.
TRY_NEXT_NODE_CODES = {"unavailable"}


@dataclasses.dataclass(frozen=True)
class Outcome:
    type: str  # "ok", "fail" or "info"
    value: Any = None  # the result recorded in the history
    node: int | None = None  # the node that answered
    error: str | None = None
    left_out: bool = False  # never happened and saw nothing: not in the history (above)


@dataclasses.dataclass(frozen=True)
class Observation:
    """A version the store named for a key: written there, or read there."""

    key: str
    version: int
    value: Any  # register: the value; table: the entry appended at that version
    acknowledged_write: bool


class Nodes:
    """One client process's connections, one per node, and the routing rule above."""

    def __init__(self, clients: dict[int, Client], rng: random.Random, timeout_seconds: float,
                 routing: str = "random"):
        assert routing in ROUTINGS, routing
        self.clients = clients
        self.rng = rng
        self.timeout_seconds = timeout_seconds
        self.routing = routing
        self.last_node: int | None = None  # the node the last attempt went to

    async def call(
        self, key: bytes, operation: Callable[[Client, float], Awaitable[Any]]
    ) -> tuple[Any, int]:
        """Run `operation(client, timeout)` on a node, on to the next when refused."""
        node_ids = sorted(self.clients)
        if self.routing == "random":
            first = self.rng.randrange(len(node_ids))
        else:  # the client library's rule: every client sends a key to the same node first
            first = crc32c.crc32c(key) % len(node_ids)
        order = node_ids[first:] + node_ids[:first]
        deadline = trio.current_time() + self.timeout_seconds
        refusal: KvError | None = None
        for node_id in order:
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                break
            self.last_node = node_id
            try:
                return await operation(self.clients[node_id], remaining), node_id
            except KvError as error:
                if error.code not in TRY_NEXT_NODE_CODES:
                    raise
                refusal = error
        if refusal is not None:
            raise refusal
        raise _DeadlinePassed()


class _DeadlinePassed(Exception):
    """Every node tried refused, and no time is left: the operation never started."""


def outcome_of_error(error: Exception, nodes: Nodes) -> Outcome:
    if isinstance(error, _DeadlinePassed):
        return Outcome("fail", node=nodes.last_node, error="deadline passed before any node took it")
    assert isinstance(error, KvError), error
    if error.code in DEFINITE_CODES:
        return Outcome("fail", node=nodes.last_node, error=error.code)
    return Outcome("info", node=nodes.last_node, error=error.code)


class KeySlots:
    """A few keys in use at once; each is retired after `operations_per_key_max`."""

    def __init__(self, prefix: str, slots: int, operations_per_key_max: int):
        self.prefix = prefix
        self.operations_per_key_max = operations_per_key_max
        self._generation = [0] * slots
        self._used = [0] * slots
        self.keys_used: dict[str, None] = {}  # in order of first use

    def draw(self, rng: random.Random) -> str:
        slot = rng.randrange(len(self._generation))
        if self._used[slot] >= self.operations_per_key_max:
            self._generation[slot] += 1
            self._used[slot] = 0
        self._used[slot] += 1
        key = f"{self.prefix}{slot}.{self._generation[slot]}"
        self.keys_used.setdefault(key)
        return key


def store_key(key: str) -> bytes:
    return STORE_KEY_PREFIX + key.encode()


class Workload:
    """The shape every workload has; see RegisterWorkload and TableAppendWorkload."""

    name = ""
    model = ""

    def __init__(self, rng: random.Random, key_slots: int, operations_per_key_max: int):
        self.rng = rng
        self.keys = KeySlots(self.key_prefix, key_slots, operations_per_key_max)
        self.next_value = 0
        self.observations: list[Observation] = []

    key_prefix = "k"

    def unique_value(self) -> int:
        self.next_value += 1
        return self.next_value

    def draw(self, process_slot: int) -> tuple[str, str, Any]:
        """The next operation of a client process: (function, key, argument)."""
        raise NotImplementedError

    def may_be_left_out(self, function: str) -> bool:
        """Whether an operation of `function` may end `left_out` (see Refused operations)."""
        return False

    async def run(
        self, nodes: Nodes, process_slot: int, function: str, key: str, argument: Any
    ) -> Outcome:
        raise NotImplementedError

    def final_read(self) -> tuple[str, Any]:
        """The function and argument of a final read of a key."""
        raise NotImplementedError

    async def node_state(self, client: Client, keys: list[str], timeout: float) -> dict[str, Any]:
        """What one node has applied for each key (its own state, no quorum)."""
        raise NotImplementedError


class RegisterWorkload(Workload):
    """read, write, cas on a few registers; a cas expects the last value anyone saw."""

    name = "register"
    model = "register"
    key_prefix = "r"

    def __init__(self, rng: random.Random, key_slots: int = 4, operations_per_key_max: int = 250):
        super().__init__(rng, key_slots, operations_per_key_max)
        self.last_seen: dict[str, int | None] = {}

    def draw(self, process_slot: int) -> tuple[str, str, Any]:
        key = self.keys.draw(self.rng)
        roll = self.rng.random()
        if roll < 0.4:
            return "read", key, None
        if roll < 0.7:
            return "write", key, self.unique_value()
        return "cas", key, [self.last_seen.get(key), self.unique_value()]

    def final_read(self) -> tuple[str, Any]:
        return "read", None

    def may_be_left_out(self, function: str) -> bool:
        return function == "cas"

    async def run(
        self, nodes: Nodes, process_slot: int, function: str, key: str, argument: Any
    ) -> Outcome:
        outcome = await self._run(nodes, function, key, argument)
        if function == "cas" and outcome.type == "fail" and outcome.error != "condition_failed":
            return dataclasses.replace(outcome, left_out=True)
        return outcome

    async def _run(self, nodes: Nodes, function: str, key: str, argument: Any) -> Outcome:
        stored = store_key(key)
        try:
            if function == "read":
                item, node = await nodes.call(
                    stored, lambda client, timeout: client.get(stored, timeout=timeout))
                value = None if item is None else int(item.value)
                if item is not None:
                    self.observations.append(Observation(key, item.version, value, False))
                self.last_seen[key] = value
                return Outcome("ok", value, node)
            if function == "write":
                version, node = await nodes.call(
                    stored, lambda client, timeout: client.put(stored, b"%d" % argument, timeout=timeout))
                self.observations.append(Observation(key, version, argument, True))
                self.last_seen[key] = argument
                return Outcome("ok", argument, node)
            expected, new = argument
            expected_bytes = None if expected is None else b"%d" % expected
            version, node = await nodes.call(
                stored, lambda client, timeout: client.put(
                    stored, b"%d" % new, expected_value=expected_bytes, timeout=timeout))
            self.observations.append(Observation(key, version, new, True))
            self.last_seen[key] = new
            return Outcome("ok", argument, node)
        except (KvError, _DeadlinePassed) as error:
            return outcome_of_error(error, nodes)

    async def node_state(self, client: Client, keys: list[str], timeout: float) -> dict[str, Any]:
        state: dict[str, Any] = {}
        resume = None
        while True:
            page = await client.scan_page(prefix=STORE_KEY_PREFIX, resume=resume, timeout=timeout)
            for item in page.items:
                key = item.key[len(STORE_KEY_PREFIX):].decode()
                state[key] = (int(item.value), item.version)
            if page.resume is None:
                return {key: state.get(key) for key in keys}
            resume = page.resume


class TableAppendWorkload(Workload):
    """appends, whole reads and incremental syncs on a few Key-Table keys.

    Each process keeps, per key, the entries its syncs returned so far and
    syncs from there: `sync since` in the history is that count. Only
    appends change these tables, one version each, so a count of entries
    is a version.
    """

    name = "table-append"
    model = "table-append"
    key_prefix = "t"

    def __init__(self, rng: random.Random, key_slots: int = 4, operations_per_key_max: int = 200):
        super().__init__(rng, key_slots, operations_per_key_max)
        self.held: dict[tuple[int, str], int] = {}  # (process slot, key) -> entries held

    def draw(self, process_slot: int) -> tuple[str, str, Any]:
        key = self.keys.draw(self.rng)
        roll = self.rng.random()
        if roll < 0.5:
            return "append", key, self.unique_value()
        if roll < 0.7:
            return "read", key, None
        return "sync", key, self.held.get((process_slot, key), 0)

    def final_read(self) -> tuple[str, Any]:
        return "read", None

    async def run(
        self, nodes: Nodes, process_slot: int, function: str, key: str, argument: Any
    ) -> Outcome:
        stored = store_key(key)
        try:
            if function == "append":
                version, node = await nodes.call(
                    stored, lambda client, timeout: client.append(stored, b"%d" % argument, timeout=timeout))
                self.observations.append(Observation(key, version, argument, True))
                return Outcome("ok", argument, node)
            since = 0 if function == "read" else argument
            result, node = await nodes.call(
                stored, lambda client, timeout: client.sync(stored, since, timeout=timeout))
        except (KvError, _DeadlinePassed) as error:
            return outcome_of_error(error, nodes)
        if result.more:
            return Outcome("info", node=node, error="sync stopped at a page limit")
        entries = []
        for row in result.rows:
            entry = int(row.value)
            entries.append(entry)
            self.observations.append(Observation(key, row.version, entry, False))
        self.held[(process_slot, key)] = since + len(entries)
        return Outcome("ok", entries, node)

    async def node_state(self, client: Client, keys: list[str], timeout: float) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for key in keys:
            rows: list[tuple[int, int]] = []
            since = 0
            while True:
                result = await client.sync(store_key(key), since, stale=True, timeout=timeout)
                rows.extend((row.version, int(row.value)) for row in result.rows)
                since = result.version
                if not result.more:
                    break
            state[key] = (tuple(rows), result.version)
        return state


def workload_named(name: str, rng: random.Random, operations_per_key_max: int | None = None) -> Workload:
    options = {} if operations_per_key_max is None else {"operations_per_key_max": operations_per_key_max}
    if name == "register":
        return RegisterWorkload(rng, **options)
    if name == "table-append":
        return TableAppendWorkload(rng, **options)
    raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")

