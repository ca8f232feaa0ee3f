"""The deterministic simulator: a replica group in one process, replayable from a seed.

Theory of operation. Every replica is the real sans-IO core over an
in-memory storage that can lose its unsynced writes. The simulator owns
everything else a real deployment leaves to chance, and draws all of it
from one seeded `random.Random`:

- time: a global tick; every replica ticks once per simulated tick;
- the network: every message gets a delay (the stream channel and the
  consensus channel have their own ranges), and may be dropped, duplicated
  or reordered; partitions cut pairs of nodes off for a while;
- crashes: a node crashes at a random moment, between its unsynced writes
  and the sync (losing a random suffix of them, never a random subset), or
  midway through sending a step's messages, and restarts later from what
  its storage kept;
- clients: a few processes run reads, writes and compare-and-sets on a few
  hot keys, each through a coordinator picked by a flapping routing rule.

It obeys the effects order exactly as the node shell does: writes, then a
sync, then messages and replies. After every step it asserts the protocol's
invariants: one ref per (key, version, ballot) in any Accept; equal bytes
for a ref everywhere; one decision per (key, version); the same state
digest for (key, version) on every replica. At the end it heals everything,
waits for the replicas to converge, reads every key through every node and
hands the history to the linearizability checker; it also checks that no
acknowledged write was lost and that every replica holds the same state.

`python -m jepsen_tests.simulator --seeds 200` runs seeds 0..199;
`--seed N` replays one and prints its trace summary.
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

from jepsen_tests.checker import Event, Verdict, check_events, model_named
from kvsvr import model
from kvsvr.errors import ConditionFailed, KvError, NotFound
from kvsvr.replication.messages import STREAM_MESSAGES, Accept, Effects
from kvsvr.replication.replica import Replica, ReplicaOptions
from kvsvr.requests import Get, Write
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


@dataclasses.dataclass(frozen=True)
class Workload:
    keys: int = 3
    clients: int = 5
    operations: int = 150
    read_fraction: float = 0.35
    cas_fraction: float = 0.25
    preferred_coordinator_probability: float = 0.7
    think_ticks: tuple[int, int] = (0, 6)
    client_deadline_ticks: int = 500
    settle_ticks_max: int = 3000


@dataclasses.dataclass
class _Node:
    node_id: int
    storage: MemoryStorage
    replica: Replica | None
    down_until: int | None = None


@dataclasses.dataclass
class _ClientOperation:
    process: int
    function: str  # read, write, cas
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
        self.options = options or ReplicaOptions()
        self.member_ids = tuple(range(1, members + 1))
        self.now = 0
        self._sequence = 0  # orders events within a tick
        self._network: list = []  # heap of (deliver_at, sequence, source, destination, message)
        self._cut: dict[frozenset, int] = {}  # partitioned pairs -> healed at tick
        self.faults_on = True
        self.nodes = {
            node_id: _Node(node_id, MemoryStorage(), None) for node_id in self.member_ids
        }
        for node in self.nodes.values():
            self._boot(node)
        # invariant records
        self._accept_refs: dict[tuple, tuple] = {}
        self._payload_bytes: dict[tuple, bytes] = {}
        self._decisions: dict[tuple, object] = {}
        self._digests: dict[tuple, int] = {}
        # clients and history
        self._next_request_id = 1
        self._in_flight: dict[int, _ClientOperation] = {}  # request id -> op
        self._busy: set[int] = set()
        self._client_ready_at = {process: 0 for process in range(workload.clients)}
        self._written_values: dict[str, list[str]] = collections.defaultdict(list)
        self.history: list[Event] = []
        self.operations_started = 0
        self.acknowledged_writes: dict[str, int] = collections.Counter()
        self.trace: collections.deque = collections.deque(maxlen=60)

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
        self._carry_out(node, node.replica.start())

    def _crash(self, node: _Node, *, lose_unsynced: bool = True) -> None:
        kept = node.storage.unsynced_batch_count
        if lose_unsynced and kept:
            kept = self.rng.randint(0, kept)
        node.storage.crash(kept)
        node.replica = None
        node.down_until = self.now + self.rng.randint(*self.faults.restart_delay_ticks)
        self.trace.append((self.now, f"crash n{node.node_id} kept {kept} unsynced batches"))

    def _carry_out(self, node: _Node, effects: Effects) -> None:
        """Obey the effects order: sync, then messages, then replies."""
        if effects.sync:
            if self.faults_on and self.rng.random() < self._crash_now_probability():
                self._crash(node)  # between the writes and their sync
                return
            node.storage.sync()
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
            roll = self.rng.random()
            if roll < workload.read_fraction:
                function, argument = "read", None
            elif roll < workload.read_fraction + workload.cas_fraction:
                candidates = self._written_values[key] or [None]
                function = "cas"
                argument = [self.rng.choice(candidates[-4:]), f"v{self._sequence}"]
            else:
                function, argument = "write", f"v{self._sequence}"
            self._issue(process, function, key, argument, self._route(key))

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
        if function == "write":
            self._written_values[key].append(argument)
            request = Write(key.encode(), model.Put(argument.encode()), model.NO_CONDITION)
        elif function == "cas":
            self._written_values[key].append(argument[1])
            expected = None if argument[0] is None else argument[0].encode()
            request = Write(
                key.encode(), model.Put(argument[1].encode()), model.Condition(None, expected)
            )
        else:
            request = Get(key.encode())
        node = self.nodes[coordinator]
        if node.replica is None:
            return  # the request is lost with the node: the client hears nothing
        self._carry_out(node, node.replica.submit(request_id, request))

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
        function, key = operation.function, operation.key
        if isinstance(answer, KvError):
            if function == "read":
                if isinstance(answer, NotFound):
                    self._record(operation.process, "ok", "read", key, None)
                else:
                    self._record(operation.process, "fail", "read", key, None)
            elif isinstance(answer, ConditionFailed):
                self._record(operation.process, "fail", function, key, operation.argument)
            elif answer.indeterminate:
                self._record(operation.process, "info", function, key, operation.argument)
            else:
                self._record(operation.process, "fail", function, key, operation.argument)
            return
        if function == "read":
            self._record(operation.process, "ok", "read", key, answer["value"].decode())
        else:
            self.acknowledged_writes[key] += 1
            self._record(operation.process, "ok", function, key, operation.argument)

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
            result = check_events(self.history, model_named("register"), budget_seconds=30)
            verdict = result.verdict.value
            if result.verdict is not Verdict.LINEARIZABLE:
                problems.append(f"history: {result.describe()}")
        ok = sum(1 for event in self.history if event.type == "ok")
        return RunResult(self.seed, self.operations_started, ok, self.now, verdict, problems,
                         time.perf_counter() - started)

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jepsen_tests.simulator")
    parser.add_argument("--seed", type=int, help="replay one seed and print its trace")
    parser.add_argument("--seeds", type=int, default=50, help="run seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=3, choices=(3, 5))
    parser.add_argument("--operations", type=int, default=Workload.operations)
    arguments = parser.parse_args(argv)
    workload = Workload(operations=arguments.operations)
    if arguments.seed is not None:
        simulation = Simulation(arguments.seed, members=arguments.members, workload=workload)
        result = simulation.run()
        for tick, line in simulation.trace:
            print(f"  t{tick}: {line}")
        _print_result(result)
        return 0 if result.passed else 1
    failed = 0
    started = time.perf_counter()
    for seed in range(arguments.first_seed, arguments.first_seed + arguments.seeds):
        result = Simulation(seed, members=arguments.members, workload=workload).run()
        if not result.passed:
            failed += 1
            _print_result(result)
            print(f"  replay: python -m jepsen_tests.simulator --seed {seed}", flush=True)
    total = arguments.seeds
    print(f"{total - failed} passed, {failed} failed  "
          f"({time.perf_counter() - started:.1f} s, {arguments.members} members)")
    return 1 if failed else 0


def _print_result(result: RunResult) -> None:
    status = "PASS" if result.passed else "FAIL"
    print(f"seed {result.seed}: {status} {result.operations} ops ({result.ok} ok), "
          f"{result.ticks} ticks, {result.seconds:.2f} s, {result.verdict}")
    for problem in result.problems:
        print(f"  {problem}")


if __name__ == "__main__":
    sys.exit(main())
