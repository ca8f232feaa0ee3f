"""The deterministic simulator: a replica group in one process, replayable from a seed.

Theory of operation. Every replica is the real sans-IO core over an
in-memory storage that can lose its unsynced writes. The simulator owns
everything else a real deployment leaves to chance, and draws all of it
from one seeded `random.Random`:

- time: a global tick; every replica ticks once per simulated tick;
- the network: every message gets a delay (the stream channel and the
  consensus channel have their own ranges; the stream is slower, so
  payloads often arrive after their Accept), and may be dropped,
  duplicated or reordered. Partitions isolate one node, split the group
  in two (2|3 on five members), or leave one node bridging two sides cut
  from each other. A message reaching a node that is down often waits
  and is delivered to its next incarnation, as the node shell's peer
  links keep frames queued for a peer that is away (a sender's crash
  loses what it had queued);
- storage: a crash keeps a random prefix of the unsynced write batches,
  never a random subset. In *group commit* runs a node syncs once per
  tick, for every step of that tick, and a step's messages wait for that
  sync, in step order (the rule in messages.Effects);
- crashes: a node crashes at a random moment, between its unsynced writes
  and the sync, or midway through sending a step's messages, and at
  protocol moments the replicas report: right after granting a Prepare,
  after voting, after winning an Accept round (before or after the
  decision leaves), and while installing a transferred state below a
  vote it holds. It restarts later from what its storage kept;
- log retention: in *small log* runs every origin keeps only a few log
  records and collects payloads quickly, so peers fall behind the trimmed
  log and catch up by walks and state transfer (in pages, for tables);
- clients: a few processes on a few hot keys, each request through a
  coordinator picked by a flapping routing rule. The register workload
  reads, writes, deletes, and compare-and-sets on the value or on the
  version; the table-append workload appends (some on a version) and reads
  whole tables.

It obeys the effects order exactly as the node shell does: writes, then a
sync, then messages and replies. While it runs, the oracle
(simulation_oracle.py) checks the protocol's invariants after every step
and on every message that leaves a node: among them "chosen" computed from
the acceptors' votes over the whole run, and acceptors that never forget a
promise or vote they revealed; a message a replica refuses from its peer as
bad input is a violation too. At the end it heals everything, waits for
the replicas to converge, has every member write to every key at once
(each of those writes, and every final read, must settle: the liveness
oracle), reads every key through every node and hands the history to the
linearizability checker; it also checks that no acknowledged write was
lost and that every replica holds the same state.

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

from jepsen_tests.checker import Event, Verdict, check_events
from jepsen_tests.checker.versioned_models import CHECKED_MODELS
from jepsen_tests.simulation_oracle import InvariantViolation, Oracle
from kvsvr.core import model
from kvsvr.core.requests import Get, Sync, Write
from kvsvr.protocol.errors import ConditionFailed, KvError, NotFound
from kvsvr.replication import events
from kvsvr.replication.messages import STREAM_MESSAGES, Effects
from kvsvr.replication.replica import PeerInputError, Replica, ReplicaOptions
from kvsvr.storage import MemoryStorage


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
    # A partition isolates one node, splits the group in two (2|3 on five),
    # or leaves one node as a bridge between two sides cut from each other.
    partition_shapes: tuple[str, ...] = ("isolate", "split", "bridge")
    # A message reaching a node that is down waits in its sender's link and
    # is delivered to the node's next incarnation, as the node shell's
    # peer links do (unless the sender crashes first: its queue dies with it).
    held_across_restart_probability: float = 0.5
    held_messages_max: int = 256  # per destination
    # Crashes at protocol moments, right after the step's messages left:
    # granting a Prepare, voting for an Accept, winning an Accept round,
    # and installing a state transfer below a vote the replica holds.
    crash_after_promise_probability: float = 0.01
    crash_after_vote_probability: float = 0.003
    crash_after_win_probability: float = 0.01
    crash_after_state_below_vote_probability: float = 0.5
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


# -- the simulation -----------------------------------------------------------------


@dataclasses.dataclass
class _Node:
    node_id: int
    storage: MemoryStorage
    replica: Replica | None
    down_until: int | None = None
    # Group commit: effects of this tick's steps, waiting for the node's sync.
    waiting: list[Effects] = dataclasses.field(default_factory=list)
    # Messages that reached it while it was down, for its next incarnation.
    held: list[tuple[int, object]] = dataclasses.field(default_factory=list)
    # A protocol moment was reached: crash once the step's writes are synced,
    # "before" its messages leave or "after" they all left.
    crash_at_release: str | None = None


@dataclasses.dataclass
class _ClientOperation:
    process: int
    function: str
    key: str
    argument: object
    coordinator: int
    deadline: int
    final: bool = False
    # Issued after the faults healed: it must settle (the liveness oracle).
    must_settle: bool = False


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
        self.oracle = Oracle(members)
        self.counters: collections.Counter = self.oracle.counters
        self.unsettled: list[str] = []  # operations after healing that did not settle
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
        node.crash_at_release = None
        self._carry_out(node, node.replica.start())
        self._flush(node)  # nothing leaves a node before its incarnation is synced (R1)
        if node.replica is None:
            return  # it crashed again at that sync
        self.oracle.restarted(node.node_id, node.replica.consensus_snapshot)
        held, node.held = node.held, []
        for source, message in held:
            self._enqueue(self.now + self.rng.randint(*self.faults.consensus_delay_ticks),
                          source, node.node_id, message)
        if held:
            self.counters["messages_across_a_restart"] += len(held)

    def _crash(self, node: _Node, *, lose_unsynced: bool = True) -> None:
        kept = node.storage.unsynced_batch_count
        if lose_unsynced and kept:
            kept = self.rng.randint(0, kept)
        node.storage.crash(kept)
        node.replica = None
        node.waiting = []
        node.crash_at_release = None
        node.down_until = self.now + self.rng.randint(*self.faults.restart_delay_ticks)
        for other in self.nodes.values():  # its links' queues die with it
            other.held = [(source, message) for source, message in other.held
                          if source != node.node_id]
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
        if node.crash_at_release == "before":
            self.counters["crashes_at_protocol_moments"] += 1
            self._crash(node, lose_unsynced=False)
            return
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
        if node.crash_at_release == "after" and node.replica is not None:
            self.counters["crashes_at_protocol_moments"] += 1
            self._crash(node)

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
        # It left after its step's sync: what it reveals is durable.
        self.oracle.message_sent(source, message)
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
            if self.faults_on and frozenset((source, destination)) in self._cut:
                continue
            if node.replica is None:
                if (
                    self.faults_on
                    and source != destination  # a node's messages to itself die with it
                    and len(node.held) < self.faults.held_messages_max
                    and self.rng.random() < self.faults.held_across_restart_probability
                ):
                    node.held.append((source, message))
                continue
            try:
                effects = node.replica.step(source, message)
            except PeerInputError as error:
                raise InvariantViolation(
                    f"n{destination} refused a message from n{source} as bad input: {error}"
                ) from error
            self._carry_out(node, effects)

    # -- what the replicas report, and crashes at protocol moments -----------------

    def _observe(self, event: events.Event) -> None:
        self.oracle.observe(event)
        if not self.faults_on:
            return
        faults = self.faults
        match event:
            case events.Promised():
                probability = faults.crash_after_promise_probability
            case events.Voted():
                probability = faults.crash_after_vote_probability
            case events.Won():
                probability = faults.crash_after_win_probability
            case events.StateInstalled(node_id=node_id, key=key, version=version):
                vote = self.nodes[node_id].replica.consensus_snapshot(key).accepted
                if vote is None or vote.instance.first_version <= version:
                    return
                self.counters["states_installed_below_a_vote"] += 1
                probability = faults.crash_after_state_below_vote_probability
            case _:
                return
        if self.rng.random() < probability:
            node = self.nodes[event.node_id]
            node.crash_at_release = self.rng.choice(("before", "after"))
            self.trace.append(
                (self.now, f"n{node.node_id} crashes {node.crash_at_release} this step's "
                           f"messages leave: {type(event).__name__}")
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
               final: bool = False, must_settle: bool = False) -> None:
        request_id = self._next_request_id
        self._next_request_id += 1
        operation = _ClientOperation(process, function, key, argument, coordinator,
                                     self.now + self.workload.client_deadline_ticks, final,
                                     must_settle)
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
        if operation.must_settle and isinstance(answer, KvError) and not isinstance(
            answer, (ConditionFailed, NotFound)
        ):
            self._did_not_settle(operation, type(answer).__name__)
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

    def _did_not_settle(self, operation: _ClientOperation, why: str) -> None:
        self.unsettled.append(
            f"{operation.function} {operation.key} through n{operation.coordinator}: {why}"
        )

    def _expire_clients(self) -> None:
        for request_id, operation in list(self._in_flight.items()):
            if operation.deadline <= self.now:
                del self._in_flight[request_id]
                self._busy.discard(operation.process)
                if operation.must_settle:
                    self._did_not_settle(operation, "no answer")
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
            self._partition(self.rng.choice(faults.partition_shapes))

    def _partition(self, shape: str) -> None:
        """Cut every pair across two sides, until a drawn tick.

        isolate: one node | the rest; split: a random cut (2|3 or 1|4 on
        five); bridge: one node keeps its links to both sides, which are cut
        from each other (each side may then hear of the other only through it).
        """
        members = list(self.member_ids)
        self.rng.shuffle(members)
        bridge = None
        if shape == "isolate":
            sides = (members[:1], members[1:])
        elif shape == "split":
            cut = self.rng.randint(1, len(members) // 2)
            sides = (members[:cut], members[cut:])
        else:
            bridge, rest = members[0], members[1:]
            cut = self.rng.randint(1, len(rest) // 2)
            sides = (rest[:cut], rest[cut:])
        until = self.now + self.rng.randint(*self.faults.partition_duration_ticks)
        for one in sides[0]:
            for other in sides[1]:
                self._cut[frozenset((one, other))] = max(
                    until, self._cut.get(frozenset((one, other)), 0)
                )
        shown = " | ".join(",".join(f"n{node}" for node in sorted(side)) for side in sides)
        if bridge is not None:
            shown += f" (n{bridge} bridges)"
        self.counters[f"partitions_{shape}"] += 1
        self.trace.append((self.now, f"partition {shown} until {until}"))

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
            self._contend_after_healing()
            self._final_reads()
            problems.extend(self._check_convergence())
            if self.unsettled:
                problems.append(
                    f"liveness: {len(self.unsettled)} operations issued after healing did "
                    f"not settle: {'; '.join(self.unsettled[:4])}"
                )
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

    def _contend_after_healing(self) -> None:
        """The liveness oracle's load: with every fault healed, each member
        coordinates a write to each key at once. Coordinators duel for every
        key; with backoff (R6) each write must settle before its deadline."""
        function = "append" if self.workload.model == "table-append" else "write"
        processes = []
        for index in range(self.workload.keys):
            for node_id in self.member_ids:
                process = self.workload.clients + len(self.member_ids) * (index + 1) + node_id
                processes.append(process)
                self._sequence += 1
                self._issue(process, function, f"k{index}", f"v{self._sequence}", node_id,
                            must_settle=True)
        self._tick_while_busy(processes)

    def _final_reads(self) -> None:
        for index in range(self.workload.keys):
            for node_id in self.member_ids:
                process = self.workload.clients + node_id
                self._issue(process, "read", f"k{index}", None, node_id, final=True,
                            must_settle=True)
                self._tick_while_busy([process])

    def _tick_while_busy(self, processes) -> None:
        for _ in range(self.workload.client_deadline_ticks + 1):
            if not self._busy.intersection(processes):
                return
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


# Every rule of docs/replication.md broken by a realistic one-line mistake
# (ReplicaOptions.bug_*), the group size it is run with, and what the first
# problem the simulator reports must say. R6 is a liveness rule: three coordinators duelling on three
# members still get through without backoff, five do not.
PLANTED_BUGS = [
    ("bug_incarnation_not_raised", "R1", 3, "log position"),
    ("bug_promise_inferred_after_restart", "R2", 3, "two refs"),
    ("bug_delete_forgets_version", "R3", 3, "did not converge"),
    ("bug_parked_accept_not_rechecked", "R4", 3, "two instances chosen"),
    ("bug_accepted_counted_by_ballot", "R5", 3, "with the votes of"),
    ("bug_no_backoff", "R6", 5, "liveness:"),
    ("bug_condition_failed_unconfirmed", "R7", 3, "not linearizable"),
    ("bug_round_given_up_keeps_promise", "R8", 3, "two refs"),
    ("bug_rejected_writes_requeued", "R9", 3, "not linearizable"),
    ("bug_read_not_waiting_apply", "R10", 3, "not linearizable"),
    ("bug_vote_payload_unpinned", "R11", 3, "did not converge"),
    ("bug_state_transfer_resets_acceptor", "R12", 3, "a promise it revealed was forgotten"),
    ("bug_apply_past_a_gap", "invariant 4", 3, "replicas differ"),
    ("bug_promise_not_synced", "replies after sync", 3, "a promise it revealed was forgotten"),
    ("bug_skip_promise_check", "Accept below the promise", 3, "two instances chosen"),
    ("bug_reply_before_sync", "replies after sync", 3, "a vote it revealed was forgotten"),
    ("bug_read_without_quorum", "linearizable reads", 3, "not linearizable"),
]




def first_failure_with(bug: str, members: int, seeds: int) -> RunResult | None:
    """The first of seeds 0..seeds-1 whose run fails with the planted `bug` on."""
    options = dataclasses.replace(ReplicaOptions(), **{bug: True})
    for seed in range(seeds):
        result = Simulation(seed, members=members, options=options).run()
        if not result.passed:
            return result
    return None


def print_planted_bugs(seeds: int) -> int:
    """Run every planted bug; print the seeds each took and the check that fired."""
    missed = 0
    print("| bug | rule | members | seeds | check that fired |")
    print("|---|---|---|---|---|")
    for bug, rule, members, _found in PLANTED_BUGS:
        result = first_failure_with(bug, members, seeds)
        if result is None:
            missed += 1
            print(f"| `{bug}` | {rule} | {members} | not caught in {seeds} | |", flush=True)
            continue
        problem = result.problems[0]
        shown = problem if len(problem) <= 110 else problem[:107] + "..."
        print(f"| `{bug}` | {rule} | {members} | {result.seed + 1} | {shown} |", flush=True)
    return 1 if missed else 0


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
    parser.add_argument("--planted-bugs", action="store_true",
                        help="run every planted bug (seeds 0..N-1 each, N from --seeds) and "
                             "print which check caught it and after how many seeds")
    arguments = parser.parse_args(argv)
    if arguments.planted_bugs:
        return print_planted_bugs(arguments.seeds)
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
