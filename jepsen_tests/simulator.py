"""The deterministic simulator: a replica group in one process, replayable from a seed.

Theory of operation. Every replica is the real sans-IO core over an
in-memory storage that can lose its unsynced writes. The simulator owns
everything else a real deployment leaves to chance, and draws all of it
from one seeded `random.Random`:

- time: a global tick; every replica ticks once per simulated tick;
- the network: every message gets a delay (the stream channel and the
  consensus channel have their own ranges; the stream is slower, so
  payloads often arrive after their Accept), and may be dropped,
  duplicated or reordered; partitions cut one node off for a while;
- storage: a crash keeps a random prefix of the unsynced write batches,
  never a random subset. In *group commit* runs a node syncs once per
  tick, for every step of that tick, and a step's messages wait for that
  sync, in step order (the rule in messages.Effects);
- crashes: a node crashes at a random moment, between its unsynced writes
  and the sync, or midway through sending a step's messages, and restarts
  later from what its storage kept;
- log retention: in *small log* runs every origin keeps only a few log
  records and collects payloads quickly, so peers fall behind the trimmed
  log and catch up by walks and state transfer (in pages, for tables);
- clients: a few processes on a few hot keys, each request through a
  coordinator picked by a flapping routing rule. The register workload
  reads, writes, deletes, and compare-and-sets on the value or on the
  version; the table-append workload appends (some on a version) and reads
  whole tables.

It obeys the effects order exactly as the node shell does: writes, then a
sync, then messages and replies. After every step it asserts the protocol's
invariants: one ref per (key, version, ballot) in any Accept; equal bytes
for a ref everywhere; one decision per (key, version); the same state
digest for (key, version) on every replica. At the end it heals everything,
waits for the replicas to converge, reads every key through every node and
hands the history to the linearizability checker; it also checks that no
acknowledged write was lost and that every replica holds the same state.

`python -m jepsen_tests.simulator --seeds 200` runs seeds 0..199;
`--seed N` replays one and prints its trace summary. A run depends on its
seed and settings only (not on Python's hash seed).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import heapq
import random
import sys
import time
import zlib
from collections.abc import Sequence

from jepsen_tests.checker import Event, Verdict, check_events
from jepsen_tests.checker.history import HistoryError, Operation
from jepsen_tests.checker.models import (
    REJECTED,
    Model,
    State,
    TableAppendModel,
    Transition,
)
from kvsvr import model
from kvsvr.errors import ConditionFailed, KvError, NotFound
from kvsvr.replication.messages import STREAM_MESSAGES, Accept, Effects
from kvsvr.replication.replica import Replica, ReplicaOptions
from kvsvr.requests import Get, Sync, Write
from kvsvr.storage import MemoryStorage


class InvariantViolation(AssertionError):
    """A protocol invariant broke; the message names it and the seed replays it."""


@dataclasses.dataclass(frozen=True)
class Faults:
    drop_probability: float = 0.03
    duplicate_probability: float = 0.03
    consensus_delay_ticks: tuple[int, int] = (1, 3)
    stream_delay_ticks: tuple[int, int] = (1, 8)
    crash_probability_per_tick: float = 0.004
    crash_before_sync_probability: float = 0.3  # of a crash: land between write and sync
    restart_delay_ticks: tuple[int, int] = (5, 60)
    partition_probability_per_tick: float = 0.006
    partition_duration_ticks: tuple[int, int] = (10, 120)
    # Share of runs in which each node syncs once per tick for all its steps.
    group_commit_run_probability: float = 0.5
    # Share of runs with a tiny log and quick payload collection.
    small_log_run_probability: float = 0.35


@dataclasses.dataclass(frozen=True)
class Workload:
    # "register": read / write / delete / cas on the value / cas on the
    # version, on Key-Value keys; "table-append": appends (some conditional
    # on the table's version) and whole-table reads on Key-Table keys.
    model: str = "register"
    keys: int = 3
    clients: int = 5
    operations: int = 150
    read_fraction: float = 0.3
    cas_fraction: float = 0.15
    cas_version_fraction: float = 0.1
    delete_fraction: float = 0.07
    conditional_append_fraction: float = 0.2  # of table-append's appends
    preferred_coordinator_probability: float = 0.7
    think_ticks: tuple[int, int] = (0, 6)
    client_deadline_ticks: int = 500
    settle_ticks_max: int = 3000


# -- the sequential specifications the histories are checked against ----------------


class VersionedRegisterModel(Model):
    """A Key-Value key as the store defines it: (version, value), every change +1.

    read -> (version, value or None); write v / delete -> the new version;
    cas [expected value, new] and cas-version [expected version, new] ->
    the new version, or fail with the version the condition was checked at.
    Versions make this stricter than a plain register: an acknowledged write
    must land exactly one version after the state it follows.
    """

    name = "versioned-register"
    functions = ("read", "write", "delete", "cas", "cas-version")

    def initial_state(self) -> State:
        return (0, None)

    def _transition(self, operation: Operation) -> Transition | None:
        function, argument, result = operation.function, operation.argument, operation.result
        known = operation.status == "ok"
        if function == "read":
            if not known:
                return None
            expected = tuple(result)

            def observe(state: State) -> State:
                return state if state == expected else REJECTED

            return Transition(observe, is_observation=True)
        if function in ("write", "delete"):
            new_value = argument if function == "write" else None

            def change(state: State) -> State:
                version = state[0] + 1
                if known and result != version:
                    return REJECTED
                return (version, new_value)

            return Transition(change, is_observation=False)
        expected, new_value = _pair(operation)
        index = 1 if function == "cas" else 0

        def compare_and_set(state: State) -> State:
            if state[index] != expected:
                return REJECTED if known else state
            version = state[0] + 1
            if known and result != version:
                return REJECTED
            return (version, new_value)

        return Transition(compare_and_set, is_observation=False)

    def _failed_transition(self, operation: Operation) -> Transition | None:
        if operation.function not in ("cas", "cas-version"):
            return None
        expected, _new_value = _pair(operation)
        index = 1 if operation.function == "cas" else 0
        checked_version = operation.result

        def saw_otherwise(state: State) -> State:
            if state[index] == expected or state[0] != checked_version:
                return REJECTED
            return state

        return Transition(saw_otherwise, is_observation=True)

    def describe_state(self, state: State) -> str:
        return f"version {state[0]} holding {state[1]!r}"


class VersionedTableAppendModel(TableAppendModel):
    """Table-append, plus append-if-version: an append only on a table whose
    version (its number of entries: appends are its only change) is the one
    expected; failing, it reports the version it saw."""

    name = "versioned-table-append"
    functions = ("append", "append-if-version", "read", "sync")

    def _transition(self, operation: Operation) -> Transition | None:
        if operation.function != "append-if-version":
            return super()._transition(operation)
        expected_version, entry = _pair(operation)
        known = operation.status == "ok"

        def append_if(state: State) -> State:
            if len(state) != expected_version:
                return REJECTED if known else state
            return state + (entry,)

        return Transition(append_if, is_observation=False)

    def _failed_transition(self, operation: Operation) -> Transition | None:
        if operation.function != "append-if-version":
            return None
        expected_version, _entry = _pair(operation)
        seen_version = operation.result

        def saw_otherwise(state: State) -> State:
            ok = len(state) != expected_version and len(state) == seen_version
            return state if ok else REJECTED

        return Transition(saw_otherwise, is_observation=True)

    def operations_worth_checking(self, operations: Sequence[Operation]) -> list[Operation]:
        """Leave out indeterminate appends whose entry no read returned, when
        a whole-table read began after every determinate append ended.

        An unseen append still moves the version that a failed
        append-if-version reports, so the plain rule (the parent's) does not
        hold here. With such a final read it does: had the append taken
        effect, it comes after that read (which lacks its entry), where only
        other indeterminate operations can follow, and none of them has a
        result to check. Without a final read, nothing is left out.
        """
        if not any(operation.function == "append-if-version" for operation in operations):
            return super().operations_worth_checking(operations)
        appends = ("append", "append-if-version")
        last_append_ended = max(
            (
                operation.completion_time
                for operation in operations
                if operation.function in appends and not operation.is_indeterminate
            ),
            default=-1,
        )
        observed_entries: set = set()
        final_read = False
        for operation in operations:
            if operation.function in appends or operation.status != "ok":
                continue
            if operation.function == "sync" and operation.argument not in (None, 0):
                return list(operations)
            if isinstance(operation.result, tuple):
                observed_entries.update(operation.result)
            final_read = final_read or operation.invoke_time > last_append_ended
        if not final_read:
            return list(operations)

        def entry(operation: Operation):
            return operation.argument if operation.function == "append" else _pair(operation)[1]

        return [
            operation
            for operation in operations
            if not (
                operation.is_indeterminate
                and operation.function in appends
                and entry(operation) not in observed_entries
            )
        ]


def _pair(operation: Operation) -> tuple:
    argument = operation.argument
    if not isinstance(argument, tuple) or len(argument) != 2:
        raise HistoryError(f"{operation.describe()}: the argument must be [expected, new]")
    return argument[0], argument[1]


CHECKED_MODELS = {"register": VersionedRegisterModel(), "table-append": VersionedTableAppendModel()}


# -- the simulation -----------------------------------------------------------------


@dataclasses.dataclass
class _Node:
    node_id: int
    storage: MemoryStorage
    replica: Replica | None
    down_until: int | None = None
    # Group commit: effects of this tick's steps, waiting for the node's sync.
    waiting: list[Effects] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _ClientOperation:
    process: int
    function: str
    key: str
    argument: object
    coordinator: int
    deadline: int
    final: bool = False


@dataclasses.dataclass
class RunResult:
    seed: int
    operations: int
    ok: int
    ticks: int
    verdict: str
    problems: list[str]
    seconds: float
    settings: str = ""  # the run's drawn mode: group commit, small log
    counters: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.problems


class Simulation:
    def __init__(
        self,
        seed: int,
        *,
        members: int = 3,
        faults: Faults | None = None,
        workload: Workload | None = None,
        options: ReplicaOptions | None = None,
    ):
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.workload = workload = workload or Workload()
        self.group_commit = self.rng.random() < self.faults.group_commit_run_probability
        self.small_log = self.rng.random() < self.faults.small_log_run_probability
        options = options or ReplicaOptions()
        # Group commit runs stream as the node shell does: records are sent
        # once per round of steps, not after every step.
        options = dataclasses.replace(
            options,
            stream_pump_each_step=not self.group_commit,
            log_tail_cached_records_max=self.rng.choice((1, 8, 4096)),
        )
        if self.small_log:
            options = dataclasses.replace(
                options,
                log_retained_records_max=self.rng.choice((2, 6, 24)),
                payload_keep_ticks=self.rng.choice((8, 40, 200)),
                state_transfer_page_rows_max=self.rng.choice((1, 3, 50)),
                walk_page_keys_max=self.rng.choice((1, 2, 8)),
                catch_up_keys_max=self.rng.choice((1, 4)),
            )
        self.options = options
        self.member_ids = tuple(range(1, members + 1))
        self.now = 0
        self._sequence = 0  # orders events within a tick
        self._network: list = []  # heap of (deliver_at, sequence, source, destination, message)
        self._cut: dict[frozenset, int] = {}  # partitioned pairs -> healed at tick
        self.faults_on = True
        # invariant records
        self._accept_refs: dict[tuple, tuple] = {}
        self._payload_bytes: dict[tuple, bytes] = {}
        self._decisions: dict[tuple, object] = {}
        self._digests: dict[tuple, int] = {}
        self.counters: collections.Counter = collections.Counter()
        # clients and history
        self._next_request_id = 1
        self._in_flight: dict[int, _ClientOperation] = {}  # request id -> op
        self._busy: set[int] = set()
        self._client_ready_at = {process: 0 for process in range(workload.clients)}
        self._written_values: dict[str, list[str]] = collections.defaultdict(list)
        self._versions_seen: dict[str, int] = collections.defaultdict(int)
        self.history: list[Event] = []
        self.operations_started = 0
        self.acknowledged_writes: dict[str, int] = collections.Counter()
        self.trace: collections.deque = collections.deque(maxlen=60)
        self.nodes = {
            node_id: _Node(node_id, MemoryStorage(), None) for node_id in self.member_ids
        }
        for node in self.nodes.values():
            self._boot(node)

    @property
    def settings(self) -> str:
        modes = ["group commit" if self.group_commit else "sync per step"]
        if self.small_log:
            modes.append(
                f"small log ({self.options.log_retained_records_max} records, payloads kept "
                f"{self.options.payload_keep_ticks} ticks)"
            )
        return ", ".join(modes)

    # -- nodes -------------------------------------------------------------------

    def _boot(self, node: _Node) -> None:
        node.replica = Replica(
            node.node_id,
            self.member_ids,
            node.storage,
            random.Random(self.rng.getrandbits(64)),
            self.options,
            observer=self._observe,
        )
        node.down_until = None
        node.waiting = []
        self._carry_out(node, node.replica.start())
        self._flush(node)  # nothing leaves a node before its incarnation is synced (R1)

    def _crash(self, node: _Node, *, lose_unsynced: bool = True) -> None:
        kept = node.storage.unsynced_batch_count
        if lose_unsynced and kept:
            kept = self.rng.randint(0, kept)
        node.storage.crash(kept)
        node.replica = None
        node.waiting = []
        node.down_until = self.now + self.rng.randint(*self.faults.restart_delay_ticks)
        self.counters["crashes"] += 1
        self.trace.append((self.now, f"crash n{node.node_id} kept {kept} unsynced batches"))

    def _carry_out(self, node: _Node, effects: Effects) -> None:
        """Obey the effects order: sync, then messages, then replies.

        With group commit, a step's effects wait for the node's next sync
        (once per tick) if they need one, or if an earlier step's effects
        are still waiting: messages leave in step order.
        """
        if self.group_commit and (effects.sync or node.waiting):
            node.waiting.append(effects)
            return
        if effects.sync:
            if self.faults_on and self.rng.random() < self._crash_now_probability():
                self._crash(node)  # between the writes and their sync
                return
            node.storage.sync()
        self._release(node, effects)

    def _flush(self, node: _Node) -> None:
        """Group commit: one sync for every step waiting, then their messages in order."""
        if not node.waiting or node.replica is None:
            return
        if self.faults_on and self.rng.random() < self._crash_now_probability():
            self._crash(node)
            return
        node.storage.sync()
        waiting, node.waiting = node.waiting, []
        self.counters["group_commits"] += 1
        self.counters["steps_sharing_a_sync"] += len(waiting)
        for effects in waiting:
            if node.replica is None:
                return
            self._release(node, effects)

    def _release(self, node: _Node, effects: Effects) -> None:
        messages = effects.messages
        if self.faults_on and messages and self.rng.random() < self._crash_now_probability():
            cut = self.rng.randint(0, len(messages))
            for destination, message in messages[:cut]:
                self._send(node.node_id, destination, message)
            self._crash(node, lose_unsynced=False)  # midway through a send
            return
        for destination, message in messages:
            self._send(node.node_id, destination, message)
        for request_id, answer in effects.replies:
            self._on_reply(request_id, answer)

    def _pump_streams(self) -> None:
        """Where steps do not pump, every node streams once per round of steps."""
        if self.options.stream_pump_each_step:
            return
        for node in self.nodes.values():
            if node.replica is not None:
                self._carry_out(node, node.replica.pump_streams())

    def _crash_now_probability(self) -> float:
        return self.faults.crash_probability_per_tick * self.faults.crash_before_sync_probability

    # -- network -----------------------------------------------------------------

    def _send(self, source: int, destination: int, message) -> None:
        if source == destination:
            self._enqueue(self.now, source, destination, message)
            return
        if self.faults_on:
            if frozenset((source, destination)) in self._cut:
                return
            if self.rng.random() < self.faults.drop_probability:
                return
        delay_range = (
            self.faults.stream_delay_ticks
            if isinstance(message, STREAM_MESSAGES)
            else self.faults.consensus_delay_ticks
        )
        self._enqueue(self.now + self.rng.randint(*delay_range), source, destination, message)
        if self.faults_on and self.rng.random() < self.faults.duplicate_probability:
            self._enqueue(
                self.now + self.rng.randint(*delay_range), source, destination, message
            )

    def _enqueue(self, deliver_at: int, source: int, destination: int, message) -> None:
        self._sequence += 1
        heapq.heappush(self._network, (deliver_at, self._sequence, source, destination, message))

    def _deliver_due(self) -> None:
        while self._network and self._network[0][0] <= self.now:
            _, _, source, destination, message = heapq.heappop(self._network)
            node = self.nodes[destination]
            if node.replica is None:
                continue
            if self.faults_on and frozenset((source, destination)) in self._cut:
                continue
            self._carry_out(node, node.replica.step(source, message))

    # -- invariants ----------------------------------------------------------------

    def _observe(self, event: str, details) -> None:
        if event == "accept_sent":
            node_id, accept = details
            self._check_accept(accept)
        elif event == "accepted":
            node_id, key, ballot, instance = details
            self._check_accept(Accept(key, ballot, instance, None))
        elif event == "decided":
            node_id, key, instance = details
            previous = self._decisions.setdefault((key, instance.first_version), instance)
            if previous != instance:
                raise InvariantViolation(
                    f"two decisions for {key!r} v{instance.first_version}: "
                    f"{previous} and {instance} (learned at n{node_id})"
                )
        elif event == "applied":
            node_id, key, version, digest = details
            previous = self._digests.setdefault((key, version), digest)
            if previous != digest:
                raise InvariantViolation(
                    f"replicas differ on {key!r} at v{version} (n{node_id} disagrees)"
                )
        elif event == "payload":
            ref, payload = details
            previous = self._payload_bytes.setdefault(ref, payload)
            if previous != payload:
                raise InvariantViolation(f"ref {ref} names two different payloads")
        elif event == "parked":
            self.counters["accepts_before_their_payload"] += 1
        elif event == "state_installed":
            self.counters["state_transfers"] += 1
        elif event == "walk_started":
            self.counters["walks_after_trimmed_log"] += 1
        elif event == "log_trimmed":
            self.counters["log_trims"] += 1
        elif event == "reproposed":
            self.counters["batches_proposed_again"] += 1

    def _check_accept(self, accept: Accept) -> None:
        name = (accept.key, accept.ballot, accept.instance.first_version)
        previous = self._accept_refs.setdefault(name, accept.instance.ref)
        if previous != accept.instance.ref:
            raise InvariantViolation(
                f"two refs for {accept.key!r} v{accept.instance.first_version} at ballot "
                f"{accept.ballot}: {previous} and {accept.instance.ref}"
            )

    # -- clients -------------------------------------------------------------------

    def _record(self, process: int, kind: str, function: str, key: str, value) -> None:
        self._sequence += 1
        self.history.append(Event(process, kind, function, key, value, self._sequence))

    def _start_operations(self) -> None:
        workload = self.workload
        for process in range(workload.clients):
            if process in self._busy or self._client_ready_at[process] > self.now:
                continue
            if self.operations_started >= workload.operations:
                return
            self.operations_started += 1
            key = f"k{self.rng.randrange(workload.keys)}"
            function, argument = self._choose_operation(key)
            self._issue(process, function, key, argument, self._route(key))

    def _choose_operation(self, key: str) -> tuple[str, object]:
        workload = self.workload
        roll = self.rng.random()
        fresh = f"v{self._sequence}"
        if roll < workload.read_fraction:
            return "read", None
        roll -= workload.read_fraction
        if workload.model == "table-append":
            if roll < workload.conditional_append_fraction:
                return "append-if-version", [self._guess_version(key), fresh]
            return "append", fresh
        if roll < workload.cas_fraction:
            candidates = self._written_values[key] or [None]
            return "cas", [self.rng.choice(candidates[-4:] + [None]), fresh]
        roll -= workload.cas_fraction
        if roll < workload.cas_version_fraction:
            return "cas-version", [self._guess_version(key), fresh]
        roll -= workload.cas_version_fraction
        if roll < workload.delete_fraction:
            return "delete", None
        return "write", fresh

    def _guess_version(self, key: str) -> int:
        """A version the key may well be at: the newest one seen, give or take."""
        return max(0, self._versions_seen[key] + self.rng.choice((0, 0, 1, 2, -1)))

    def _route(self, key: str) -> int:
        preferred = self.member_ids[zlib.crc32(key.encode()) % len(self.member_ids)]
        if self.rng.random() < self.workload.preferred_coordinator_probability:
            return preferred
        return self.rng.choice(self.member_ids)

    def _issue(self, process: int, function: str, key: str, argument, coordinator: int,
               final: bool = False) -> None:
        request_id = self._next_request_id
        self._next_request_id += 1
        operation = _ClientOperation(process, function, key, argument, coordinator,
                                     self.now + self.workload.client_deadline_ticks, final)
        self._busy.add(process)
        self._in_flight[request_id] = operation
        self._record(process, "invoke", function, key, argument)
        request = self._request(function, key.encode(), argument)
        node = self.nodes[coordinator]
        if node.replica is None:
            return  # the request is lost with the node: the client hears nothing
        self._carry_out(node, node.replica.submit(request_id, request))

    def _request(self, function: str, key: bytes, argument):
        match function:
            case "write":
                self._written_values[key.decode()].append(argument)
                return Write(key, model.Put(argument.encode()), model.NO_CONDITION)
            case "delete":
                return Write(key, model.Delete(), model.NO_CONDITION)
            case "cas":
                self._written_values[key.decode()].append(argument[1])
                expected = None if argument[0] is None else argument[0].encode()
                return Write(key, model.Put(argument[1].encode()), model.Condition(None, expected))
            case "cas-version":
                self._written_values[key.decode()].append(argument[1])
                return Write(key, model.Put(argument[1].encode()), model.Condition(argument[0]))
            case "append":
                return Write(key, model.Append(argument.encode()), model.NO_CONDITION)
            case "append-if-version":
                condition = model.Condition(argument[0])
                return Write(key, model.Append(argument[1].encode()), condition)
        if self.workload.model == "table-append":
            return Sync(key, 0, 1000)
        return Get(key)

    def _on_reply(self, request_id: int, answer) -> None:
        operation = self._in_flight.pop(request_id, None)
        if operation is None:
            return
        self._complete(operation, answer)

    def _complete(self, operation: _ClientOperation, answer) -> None:
        self._busy.discard(operation.process)
        self._client_ready_at[operation.process] = self.now + self.rng.randint(
            *self.workload.think_ticks
        )
        function, key, process = operation.function, operation.key, operation.process
        if isinstance(answer, KvError):
            if answer.version is not None:
                self._versions_seen[key] = max(self._versions_seen[key], answer.version)
            if function == "read":
                if isinstance(answer, NotFound):
                    self._record(process, "ok", "read", key, [answer.version, None])
                else:
                    self._record(process, "fail", "read", key, None)
            elif isinstance(answer, ConditionFailed):
                self._record(process, "fail", function, key, answer.version)
            elif answer.indeterminate:
                self._record(process, "info", function, key, operation.argument)
            else:
                self._record(process, "fail", function, key, operation.argument)
            return
        self._versions_seen[key] = max(
            self._versions_seen[key], answer.get("version", 0), answer.get("table_version", 0)
        )
        if function == "read" and "rows" in answer:
            entries = [row[2].decode() for row in answer["rows"]]
            self._record(process, "ok", "read", key, entries)
        elif function == "read":
            self._record(process, "ok", "read", key, [answer["version"], answer["value"].decode()])
        else:
            self.acknowledged_writes[key] += 1
            result = answer["version"] if self.workload.model == "register" else operation.argument
            self._record(process, "ok", function, key, result)

    def _expire_clients(self) -> None:
        for request_id, operation in list(self._in_flight.items()):
            if operation.deadline <= self.now:
                del self._in_flight[request_id]
                self._busy.discard(operation.process)
                kind = "fail" if operation.function == "read" else "info"
                self._record(operation.process, kind, operation.function, operation.key,
                             operation.argument)

    # -- faults --------------------------------------------------------------------

    def _inject_faults(self) -> None:
        faults = self.faults
        for node in self.nodes.values():
            if node.replica is None:
                if node.down_until is not None and node.down_until <= self.now:
                    self._boot(node)
            elif self.rng.random() < faults.crash_probability_per_tick * (
                1 - faults.crash_before_sync_probability
            ):
                self._crash(node, lose_unsynced=True)
        for pair, healed_at in list(self._cut.items()):
            if healed_at <= self.now:
                del self._cut[pair]
        if self.rng.random() < faults.partition_probability_per_tick:
            isolated = self.rng.choice(self.member_ids)
            until = self.now + self.rng.randint(*faults.partition_duration_ticks)
            for other in self.member_ids:
                if other != isolated:
                    self._cut[frozenset((isolated, other))] = until
            self.trace.append((self.now, f"partition isolates n{isolated} until {until}"))

    def _heal(self) -> None:
        self.faults_on = False
        self._cut.clear()
        for node in self.nodes.values():
            if node.replica is None:
                self._boot(node)

    # -- the run -------------------------------------------------------------------

    def _tick(self) -> None:
        self.now += 1
        if self.faults_on:
            self._inject_faults()
        for node in self.nodes.values():
            if node.replica is not None:
                self._carry_out(node, node.replica.tick())
        self._deliver_due()
        self._pump_streams()
        # Group commit: each node's steps of this tick share one sync; what
        # that releases to the node itself is delivered (and synced) at once.
        rounds = 0
        while self.group_commit and any(node.waiting for node in self.nodes.values()):
            rounds += 1
            assert rounds < 10_000, "group commit: messages to self never settle"
            for node in self.nodes.values():
                self._flush(node)
            self._deliver_due()
            self._pump_streams()
        self._expire_clients()

    def run(self) -> RunResult:
        started = time.perf_counter()
        problems: list[str] = []
        try:
            while self.operations_started < self.workload.operations or self._busy:
                self._start_operations()
                self._tick()
            self._heal()
            self._settle()
            self._final_reads()
            problems.extend(self._check_convergence())
        except InvariantViolation as violation:
            problems.append(f"invariant: {violation}")
        except AssertionError as violation:
            problems.append(f"assertion in a replica: {violation}")
        verdict = "not checked"
        if not problems:
            result = check_events(
                self.history, CHECKED_MODELS[self.workload.model], budget_seconds=30
            )
            verdict = result.verdict.value
            if result.verdict is not Verdict.LINEARIZABLE:
                problems.append(f"history: {result.describe()}")
        ok = sum(1 for event in self.history if event.type == "ok")
        return RunResult(self.seed, self.operations_started, ok, self.now, verdict, problems,
                         time.perf_counter() - started, self.settings, dict(self.counters))

    def _settle(self) -> None:
        """Run fault-free until every replica has applied every decided version."""
        for _ in range(self.workload.settle_ticks_max):
            self._tick()
            if not self._in_flight and self._converged():
                return

    def _converged(self) -> bool:
        keys = [f"k{index}".encode() for index in range(self.workload.keys)]
        for key in keys:
            states = {
                node.replica.keyspace.key_state(key) for node in self.nodes.values()
            }
            chosen = {
                node.replica.consensus_snapshot(key).chosen_version for node in self.nodes.values()
            }
            if len(states) != 1 or len(chosen) != 1 or next(iter(states)).version != chosen.pop():
                return False
        return True

    def _final_reads(self) -> None:
        for index in range(self.workload.keys):
            for node_id in self.member_ids:
                process = self.workload.clients + node_id
                self._issue(process, "read", f"k{index}", None, node_id, final=True)
                for _ in range(self.workload.client_deadline_ticks):
                    if process not in self._busy:
                        break
                    self._tick()

    def _check_convergence(self) -> list[str]:
        problems = []
        if not self._converged():
            for _ in range(self.workload.settle_ticks_max):
                self._tick()
                if self._converged():
                    break
            else:
                problems.append("replicas did not converge after healing")
        for index in range(self.workload.keys):
            key = f"k{index}"
            versions = {
                node.replica.keyspace.key_state(key.encode()).version
                for node in self.nodes.values()
            }
            if max(versions) < self.acknowledged_writes[key]:
                problems.append(
                    f"{key}: {self.acknowledged_writes[key]} acknowledged writes but version "
                    f"{max(versions)}: an acknowledged write was lost"
                )
        return problems


def run_seeds(seeds, **settings) -> list[RunResult]:
    return [Simulation(seed, **settings).run() for seed in seeds]


def replay_command(seed: int, members: int = 3, workload: Workload | None = None) -> str:
    """The command that replays one run."""
    workload = workload or Workload()
    command = f"python -m jepsen_tests.simulator --seed {seed}"
    if members != 3:
        command += f" --members {members}"
    if workload.model != "register":
        command += f" --workload {workload.model}"
    if workload.operations != Workload.operations:
        command += f" --operations {workload.operations}"
    if workload.keys != Workload.keys:
        command += f" --keys {workload.keys}"
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jepsen_tests.simulator")
    parser.add_argument("--seed", type=int, help="replay one seed and print its trace")
    parser.add_argument("--seeds", type=int, default=50, help="run seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=3, choices=(3, 5))
    parser.add_argument("--operations", type=int, default=Workload.operations)
    parser.add_argument("--keys", type=int, default=Workload.keys)
    parser.add_argument("--workload", choices=tuple(CHECKED_MODELS), default="register")
    arguments = parser.parse_args(argv)
    workload = Workload(
        model=arguments.workload, operations=arguments.operations, keys=arguments.keys
    )
    if arguments.seed is not None:
        simulation = Simulation(arguments.seed, members=arguments.members, workload=workload)
        result = simulation.run()
        for tick, line in simulation.trace:
            print(f"  t{tick}: {line}")
        _print_result(result)
        print(f"  {result.settings}")
        print("  " + ", ".join(f"{name} {count}" for name, count in sorted(result.counters.items())))
        return 0 if result.passed else 1
    failed = 0
    started = time.perf_counter()
    totals: collections.Counter = collections.Counter()
    verdicts: collections.Counter = collections.Counter()
    for seed in range(arguments.first_seed, arguments.first_seed + arguments.seeds):
        result = Simulation(seed, members=arguments.members, workload=workload).run()
        totals.update(result.counters)
        verdicts[result.verdict] += 1
        if not result.passed:
            failed += 1
            _print_result(result)
            print(f"  replay: {replay_command(seed, arguments.members, workload)}", flush=True)
    total = arguments.seeds
    print(f"{total - failed} passed, {failed} failed  "
          f"({time.perf_counter() - started:.1f} s, {arguments.members} members, "
          f"{arguments.workload})")
    print("verdicts: " + ", ".join(f"{name} {count}" for name, count in sorted(verdicts.items())))
    print("totals: " + ", ".join(f"{name} {count}" for name, count in sorted(totals.items())))
    return 1 if failed else 0


def _print_result(result: RunResult) -> None:
    status = "PASS" if result.passed else "FAIL"
    print(f"seed {result.seed}: {status} {result.operations} ops ({result.ok} ok), "
          f"{result.ticks} ticks, {result.seconds:.2f} s, {result.verdict}")
    for problem in result.problems:
        print(f"  {problem}")


if __name__ == "__main__":
    sys.exit(main())
