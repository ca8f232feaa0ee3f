"""One simulated run: real replicas, simulated everything else, checked throughout.

Theory of operation. Every replica is the real sans-IO core over an
in-memory storage that can lose its unsynced writes. This module owns the
nodes and the run; the network (network.py), the clients (workload.py) and
the invariant oracle (oracle.py) are parts it drives, all drawing from the
run's one seeded random and reading the one clock:

- storage: a crash keeps a random prefix of the unsynced write batches,
  never a random subset. A step's early messages (messages.EARLY_MESSAGES)
  leave before its sync, so a node often crashes after sending them and
  before the sync. In *group commit* runs a node syncs once per tick, for
  every step of that tick, and a step's other messages wait for that sync,
  in step order (the rule in messages.Effects);
- crashes: a node crashes at a random moment, between its unsynced writes
  and the sync, or midway through sending a step's messages, and at
  protocol moments the replicas report: right after granting a Prepare,
  after voting, after winning an Accept round (before or after the
  decision leaves), and while installing a transferred state below a
  vote it holds. It restarts later from what its storage kept; messages
  that reached it while it was down are often delivered to its next
  incarnation, as the node shell's peer links keep frames queued;
- log retention: in *small log* runs every origin keeps only a few log
  records and collects payloads quickly, so peers fall behind the trimmed
  log and catch up by walks and state transfer (in pages, for tables).

It obeys the effects order exactly as the node shell does: writes, then a
sync, then messages and replies. At the end it heals everything, waits for
the replicas to converge, has every member write to every key at once
(each of those writes, and every final read, must settle: the liveness
oracle), reads every key through every node and hands the history to the
linearizability checker; it also checks that no acknowledged write was
lost and that every replica holds the same state.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import time

from jepsen_tests.checker import Verdict, check_events, model_named
from kvsvr.replication import events
from kvsvr.replication.messages import Effects
from kvsvr.replication.replica import PeerInputError, Replica, ReplicaOptions
from kvsvr.storage import MemoryStorage

from .clock import Clock
from .faults import Faults
from .network import Network
from .oracle import InvariantViolation, Oracle
from .workload import Clients, Workload


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
        self.options = self._drawn_options(options or ReplicaOptions())
        self.member_ids = tuple(range(1, members + 1))
        self.clock = Clock()
        self.network = Network(self.rng, self.faults, self.clock)
        self.clients = Clients(workload, self.rng, self.clock, self.member_ids, self._submit)
        self.faults_on = True
        self.oracle = Oracle(members)
        self.counters: collections.Counter = self.oracle.counters
        self.trace: collections.deque = collections.deque(maxlen=60)
        self.nodes = {
            node_id: _Node(node_id, MemoryStorage(), None) for node_id in self.member_ids
        }
        for node in self.nodes.values():
            self._boot(node)

    def _drawn_options(self, options: ReplicaOptions) -> ReplicaOptions:
        # Group commit runs stream as the node shell does: records are sent
        # once per round of steps, not after every step.
        options = dataclasses.replace(
            options,
            stream_pump_each_step=not self.group_commit,
            log_tail_cached_records_max=self.rng.choice((1, 8, 4096)),
        )
        if not self.small_log:
            return options
        return dataclasses.replace(
            options,
            log_retained_records_max=self.rng.choice((2, 6, 24)),
            payload_keep_ticks=self.rng.choice((8, 40, 200)),
            state_transfer_page_rows_max=self.rng.choice((1, 3, 50)),
            walk_page_keys_max=self.rng.choice((1, 2, 8)),
            catch_up_keys_max=self.rng.choice((1, 4)),
        )

    @property
    def now(self) -> int:
        return self.clock.now

    @property
    def history(self):
        return self.clients.history

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
            self.network.enqueue(
                self.now + self.rng.randint(*self.faults.consensus_delay_ticks),
                source, node.node_id, message,
            )
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

    def _crashes_before_sync(self) -> bool:
        return self.faults_on and (
            self.rng.random() < self.faults.crash_between_write_and_sync_probability
        )

    def _carry_out(self, node: _Node, effects: Effects) -> None:
        """Obey the effects order: early messages, sync, then the other
        messages, then replies.

        A step that must wait for a sync sends its early messages at once;
        the node may then crash before the sync. With group commit, a
        step's late effects wait for the node's next sync (once per tick) if
        they need one, or if an earlier step's effects are still waiting:
        late messages leave in step order.
        """
        if effects.sync or (self.group_commit and node.waiting):
            early, effects = effects.split()
            if node.crash_at_release != "before":  # that crash takes every message
                for destination, message in early:
                    self._send(node.node_id, destination, message)
        if self.group_commit and (effects.sync or node.waiting):
            node.waiting.append(effects)
            return
        if effects.sync:
            if self._crashes_before_sync():
                self._crash(node)  # between the writes and their sync
                return
            node.storage.sync()
        self._release(node, effects)

    def _flush(self, node: _Node) -> None:
        """Group commit: one sync for every step waiting, then their messages in order."""
        if not node.waiting or node.replica is None:
            return
        if self._crashes_before_sync():
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
        if messages and self._crashes_before_sync():
            cut = self.rng.randint(0, len(messages))
            for destination, message in messages[:cut]:
                self._send(node.node_id, destination, message)
            self._crash(node, lose_unsynced=False)  # midway through a send
            return
        for destination, message in messages:
            self._send(node.node_id, destination, message)
        for request_id, answer in effects.replies:
            self.clients.on_reply(request_id, answer)
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

    def _submit(self, coordinator: int, request_id: int, request) -> None:
        node = self.nodes[coordinator]
        if node.replica is None:
            return  # the request is lost with the node: the client hears nothing
        self._carry_out(node, node.replica.submit(request_id, request))

    # -- messages ----------------------------------------------------------------

    def _send(self, source: int, destination: int, message) -> None:
        # A late message left after its step's sync: what it reveals is durable.
        self.oracle.message_sent(source, message)
        self.network.send(source, destination, message)

    def _deliver_due(self) -> None:
        for source, destination, message in self.network.due():
            node = self.nodes[destination]
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

    # -- faults between steps --------------------------------------------------------

    def _inject_faults(self) -> None:
        faults = self.faults
        for node in self.nodes.values():
            if node.replica is None:
                if node.down_until is not None and node.down_until <= self.now:
                    self._boot(node)
            elif self.rng.random() < faults.crash_at_a_random_moment_probability:
                self._crash(node, lose_unsynced=True)
        self.network.end_partitions_due()
        if self.rng.random() < faults.partition_probability_per_tick:
            shape = self.rng.choice(faults.partition_shapes)
            self.counters[f"partitions_{shape}"] += 1
            self.trace.append((self.now, self.network.partition(shape, self.member_ids)))

    def _heal(self) -> None:
        self.faults_on = False
        self.network.heal()
        for node in self.nodes.values():
            if node.replica is None:
                self._boot(node)

    # -- the run -------------------------------------------------------------------

    def _tick(self) -> None:
        self.clock.advance()
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
        self.clients.expire()

    def run(self) -> RunResult:
        started = time.perf_counter()
        problems: list[str] = []
        clients = self.clients
        try:
            while not clients.workload_done:
                clients.start_operations()
                self._tick()
            self._heal()
            self._settle()
            self._contend_after_healing()
            self._final_reads()
            problems.extend(self._check_convergence())
            if clients.unsettled:
                problems.append(
                    f"liveness: {len(clients.unsettled)} operations issued after healing did "
                    f"not settle: {'; '.join(clients.unsettled[:4])}"
                )
        except InvariantViolation as violation:
            problems.append(f"invariant: {violation}")
        except AssertionError as violation:
            problems.append(f"assertion in a replica: {violation}")
        verdict = "not checked"
        if not problems:
            checked_model = model_named(f"versioned-{self.workload.model}")
            result = check_events(self.history, checked_model, budget_seconds=30)
            verdict = result.verdict.value
            if result.verdict is not Verdict.LINEARIZABLE:
                problems.append(f"history: {result.describe()}")
        ok = sum(1 for event in self.history if event.type == "ok")
        return RunResult(self.seed, clients.operations_started, ok, self.now, verdict,
                         problems, time.perf_counter() - started, self.settings,
                         dict(self.counters))

    def _settle(self) -> None:
        """Run fault-free until every replica has applied every decided version."""
        for _ in range(self.workload.settle_ticks_max):
            self._tick()
            if self.clients.idle and self._converged():
                return

    def _converged(self) -> bool:
        for key in self.workload.key_names:
            key_bytes = key.encode()
            states = {node.replica.keyspace.key_state(key_bytes) for node in self.nodes.values()}
            chosen = {
                node.replica.consensus_snapshot(key_bytes).chosen_version
                for node in self.nodes.values()
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
        for index, key in enumerate(self.workload.key_names):
            for node_id in self.member_ids:
                process = self.workload.clients + len(self.member_ids) * (index + 1) + node_id
                processes.append(process)
                value = f"v{self.clock.next_sequence()}"
                self.clients.issue(process, function, key, value, node_id, must_settle=True)
        self._tick_while_busy(processes)

    def _final_reads(self) -> None:
        for key in self.workload.key_names:
            for node_id in self.member_ids:
                process = self.workload.clients + node_id
                self.clients.issue(process, "read", key, None, node_id, must_settle=True)
                self._tick_while_busy([process])

    def _tick_while_busy(self, processes) -> None:
        for _ in range(self.workload.client_deadline_ticks + 1):
            if not self.clients.any_busy(processes):
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
        acknowledged = self.clients.acknowledged_writes
        for key in self.workload.key_names:
            versions = {
                node.replica.keyspace.key_state(key.encode()).version
                for node in self.nodes.values()
            }
            if max(versions) < acknowledged[key]:
                problems.append(
                    f"{key}: {acknowledged[key]} acknowledged writes but version "
                    f"{max(versions)}: an acknowledged write was lost"
                )
        return problems


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
