"""One fault-injection run: real nodes, clients, a nemesis, then heal, read, check.

Theory of operation. `run(config)` is bounded at every step and stops by
itself:

1. A fresh group of node processes in `out/nodes` (node i on
   127.<block>.0.i, one port; jepsen_tests/nodes.py). The address block
   (`address_block`, 0 by default) is held by one run at a time (a lock
   file), so runs in different blocks go on at once without touching
   each other: no shared address, and partition rules naming only their
   own.
2. For `time_seconds`: `concurrency` client processes (trio tasks, each
   one operation at a time, its own connection to every node from the
   clients' own address (127.<block>.0.100), so partitions between node addresses never cut
   a client off), started no faster than `rate` operations a second in
   all; beside them the nemesis plays the schedule drawn from the seed.
   A process whose operation ended `info` is retired and a fresh process
   id takes its slot, since the old operation may still be in flight. A
   compare-and-set the store refused without looking at the value is left
   out of the history (workloads.py, "Refused operations") but counted.
3. Heal everything (links, paused nodes, stopped nodes; not nodes that
   refused damaged data), then poll until every live node serves a
   linearizable read (at most `recovery_seconds`).
4. Final reads of every key through every live node, recorded in the
   history; then each node's own applied state, polled until all agree
   (at most `recovery_seconds`).
5. Stop the nodes (SIGTERM), then the checks (checks.py), the plots
   (plots.py), `verdict.json` and a summary table.

Exit status: 0 every check passed, 1 a check failed, 2 the run could not
be done (no nft for partitions, a node would not start) or a check could
not decide (the checker's budget ran out).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import trio

from kvsvr.client import Client
from kvsvr.protocol.errors import KvError

from . import checks
from .checker import HistoryWriter, Operation
from .checker.history import freeze_value
from .nemesis import (
    NEMESES,
    PARTITION_SHAPES,
    Firewall,
    Nemesis,
    NemesisUnavailable,
    World,
    draw_schedule,
    firewall_problem,
    read_nemesis_log,
)
from .nodes import ADDRESS_BLOCK_MAX, GroupProcesses
from .workloads import Nodes, Workload, workload_named

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_NOT_DONE = 2

RECOVERY_POLL_SECONDS = 0.2
FINAL_READ_ATTEMPTS = 5
PROBE_KEY = b"jepsen-probe"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    nodes: int
    workload: str
    nemeses: tuple[str, ...]
    time_seconds: float
    rate: float
    seed: int
    out: Path
    test_only_bug: str | None = None
    concurrency: int = 6
    operation_timeout_seconds: float = 3.0
    recovery_seconds: float = 60.0
    check_budget_seconds: float = 300.0
    availability_minimum: float = 0.5
    operations_per_key_max: int | None = None
    routing: str = "random"
    partition_shapes: tuple[str, ...] = PARTITION_SHAPES
    address_block: int = 0  # nodes on 127.<block>.0.1.., clients on 127.<block>.0.100

    def describe(self) -> str:
        nemeses = ",".join(self.nemeses) or "none"
        bug = f" bug={self.test_only_bug}" if self.test_only_bug else ""
        return (f"{self.workload} on {self.nodes} nodes, nemesis {nemeses}, {self.time_seconds:g} s "
                f"at {self.rate:g} op/s, seed {self.seed}{bug}")


class RunNotDone(Exception):
    """The run itself could not be carried out (as opposed to a check failing)."""


def run(config: RunConfig) -> int:
    """Carry out one run and write its results to `config.out`; returns the exit status."""
    try:
        return _run(config)
    except (RunNotDone, NemesisUnavailable) as error:
        print(f"jepsen run: {error}", file=sys.stderr)
        return EXIT_NOT_DONE
    except Exception:  # a bug of the runner is not a verdict on the store
        traceback.print_exc()
        print("jepsen run: the run failed (above); no verdict", file=sys.stderr)
        return EXIT_NOT_DONE


def _run(config: RunConfig) -> int:
    unknown = set(config.nemeses) - set(NEMESES)
    if unknown:
        raise RunNotDone(f"unknown nemesis {sorted(unknown)}; known: {', '.join(NEMESES)}")
    if "partition" in config.nemeses:
        problem = firewall_problem()
        if problem is not None:
            raise RunNotDone(f"the partition nemesis cannot run: {problem}")
    if not 0 <= config.address_block <= ADDRESS_BLOCK_MAX:
        raise RunNotDone(f"address block {config.address_block}: choose 0 to {ADDRESS_BLOCK_MAX}")
    out = config.out
    if (out / "nodes").exists():
        raise RunNotDone(f"{out} holds an earlier run; give a fresh --out")
    with address_block_held(config.address_block):
        return _run_in_block(config)


@contextlib.contextmanager
def address_block_held(address_block: int):
    """Hold the block's lock file for the run; another run in the block is refused.

    Two runs in one block would share node addresses, so one's partition
    rules would name the other's nodes. flock is released when the
    process ends, however it ends, so a killed run leaves no stale lock.
    """
    path = Path(tempfile.gettempdir()) / f"kvsvr-jepsen-block-{address_block}.lock"
    try:
        lock = open(path, "a+")
    except OSError as error:
        raise RunNotDone(f"cannot open the lock of address block {address_block}: {error}") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another run"
            raise RunNotDone(f"address block {address_block} (127.{address_block}.0.0/24) is in use "
                             f"by {holder}; give another --address-block") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        yield


def _run_in_block(config: RunConfig) -> int:
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    extra = ("--test-only-bug", config.test_only_bug) if config.test_only_bug else ()
    group = GroupProcesses(out / "nodes", members=config.nodes, extra_args=extra,
                           address_block=config.address_block)
    port = group.nodes[1].port
    firewall = None
    if "partition" in config.nemeses:
        firewall = Firewall({node_id: node.host for node_id, node in group.nodes.items()}, port,
                            config.address_block)
    world = World(group.nodes, out / "nemesis.jsonl", time.monotonic_ns)
    history_clock = _HistoryClock()
    history = HistoryWriter(out / "history.jsonl", history_clock)
    rng = random.Random(config.seed)
    workload = workload_named(config.workload, random.Random(rng.getrandbits(64)),
                              config.operations_per_key_max)
    schedule = draw_schedule(config.nemeses, config.time_seconds, random.Random(rng.getrandbits(64)))
    print(f"jepsen run: {config.describe()}; {len(schedule)} faults scheduled; results in {out}")
    try:
        try:
            group.start()
        except (RuntimeError, TimeoutError) as error:
            raise RunNotDone(f"the group would not start: {error}") from None
        record = trio.run(_drive, config, group, firewall, world, history, history_clock, workload,
                          schedule)
        record["stop_exit_codes"] = _stop_all(group, world)
    finally:
        if firewall is not None:
            firewall.remove()
        for node in group.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGCONT)
        group.kill_all()
        history.close()
        world.close()
    return _judge(config, group, workload, record, schedule)


def _stop_all(group: GroupProcesses, world: World) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for node_id, node in group.nodes.items():
        if node_id in world.retired or node.process is None or node.process.poll() is not None:
            codes[str(node_id)] = None
            continue
        codes[str(node_id)] = node.stop()
    return codes


class _HistoryClock:
    """The history's clock: monotonic time, except while the invocation of an
    operation held back until its outcome was known is written (workloads.py,
    "Refused operations"): then the moment it was invoked. The checker orders
    operations by their times, not by their lines."""

    def __init__(self) -> None:
        self.invoked_ns: int | None = None

    def __call__(self) -> int:
        return time.monotonic_ns() if self.invoked_ns is None else self.invoked_ns

    def write_invocation(self, history: HistoryWriter, invoked_ns: int, process: int,
                         function: str, key: str, argument: Any) -> None:
        self.invoked_ns = invoked_ns
        try:
            history.invoke(process, function, key, argument)
        finally:
            self.invoked_ns = None


class _RateLimiter:
    """Start times for operations, `1/rate` apart, across all client processes."""

    def __init__(self, rate: float, start: float):
        self.interval = 1.0 / rate
        self.next_start = start

    def reserve(self) -> float:
        moment = max(self.next_start, trio.current_time())
        self.next_start = moment + self.interval
        return moment


async def _drive(config: RunConfig, group: GroupProcesses, firewall: Firewall | None, world: World,
                 history: HistoryWriter, history_clock: _HistoryClock, workload: Workload,
                 schedule) -> dict[str, Any]:
    nemesis = Nemesis(group, world, firewall, config.partition_shapes)
    operations_log = open(config.out / "operations.jsonl", "w", encoding="utf-8")
    started_ns = time.monotonic_ns()
    started = trio.current_time()
    stop_at = started + config.time_seconds
    limiter = _RateLimiter(config.rate, started)
    operations_max = math.ceil(config.rate * config.time_seconds)
    counters = {"started": 0}
    left_out: list[Operation] = []  # refused before they were looked at: not in the history
    world.record("run", "note", what="workload begins")

    async def client_process(slot: int) -> None:
        process = slot
        rng = random.Random(f"{config.seed}-client-{slot}")
        async with contextlib.AsyncExitStack() as stack:
            clients = {}
            for node_id, node in group.nodes.items():
                clients[node_id] = await stack.enter_async_context(
                    Client(node.address, timeout_seconds=config.operation_timeout_seconds,
                           local_address=group.client_host))
            nodes = Nodes(clients, rng, config.operation_timeout_seconds, config.routing)
            while True:
                moment = limiter.reserve()
                if moment >= stop_at or counters["started"] >= operations_max:
                    return
                await trio.sleep_until(moment)
                counters["started"] += 1
                function, key, argument = workload.draw(slot)
                held_back = workload.may_be_left_out(function)
                if held_back:
                    invoked_ns = time.monotonic_ns()
                else:
                    invoked_ns = history.invoke(process, function, key, argument).time
                outcome = await workload.run(nodes, slot, function, key, argument)
                if outcome.left_out:
                    completed_ns = time.monotonic_ns()
                    left_out.append(Operation(
                        index=-1, process=process, function=function, key=key,
                        argument=freeze_value(argument), status=outcome.type, result=None,
                        invoke_time=invoked_ns, completion_time=completed_ns))
                else:
                    if held_back:
                        history_clock.write_invocation(history, invoked_ns, process, function,
                                                       key, argument)
                    completed_ns = history.write_event(process, outcome.type, function, key,
                                                       outcome.value).time
                operations_log.write(json.dumps({
                    "process": process, "f": function, "key": key, "type": outcome.type,
                    "node": outcome.node, "error": outcome.error, "left_out": outcome.left_out,
                    "ms": round((completed_ns - invoked_ns) / 1e6, 3),
                }) + "\n")
                if outcome.type == "info":
                    process += config.concurrency

    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(nemesis.watch_nodes)
            async with trio.open_nursery() as inner:
                inner.start_soon(nemesis.play, schedule, started, stop_at)
                for slot in range(config.concurrency):
                    inner.start_soon(client_process, slot)
            ended_ns = time.monotonic_ns()
            world.record("run", "note", what="workload ends")
            recovery = await _wait_for_recovery(group, world, config.recovery_seconds)
            world.record("run", "note", what="recovered" if recovery["recovered"] else "not recovered")
            keys = list(workload.keys.keys_used)
            await _final_reads(group, world, history, workload, keys, config)
            final_states = await _converged_states(group, world, workload, keys, config)
            outer.cancel_scope.cancel()
    finally:
        operations_log.close()
    return {
        "started_ns": started_ns,
        "ended_ns": ended_ns,
        "operations_started": counters["started"],
        "recovery": recovery,
        "keys": keys,
        "left_out": left_out,
        "final_states": final_states,
    }


def _live(group: GroupProcesses, world: World) -> list[int]:
    return [node_id for node_id in group.nodes if node_id not in world.retired | world.down]


async def _wait_for_recovery(group: GroupProcesses, world: World, seconds: float) -> dict:
    """Poll until every live node answers a linearizable read, or `seconds` pass."""
    started = trio.current_time()
    pending = set(_live(group, world))
    with trio.move_on_after(seconds):
        while pending:
            for node_id in sorted(pending):
                try:
                    async with Client(group.nodes[node_id].address,
                                      local_address=group.client_host) as client:
                        await client.get(PROBE_KEY, timeout=2.0)
                    pending.discard(node_id)
                except KvError:
                    pass
            if pending:
                await trio.sleep(RECOVERY_POLL_SECONDS)
    return {"recovered": not pending, "seconds": round(trio.current_time() - started, 3),
            "not_recovered": sorted(pending)}


async def _final_reads(group: GroupProcesses, world: World, history: HistoryWriter,
                       workload: Workload, keys: list[str], config: RunConfig) -> None:
    """A linearizable read of every key through every live node, into the history."""
    function, _ = workload.final_read()
    for node_id in _live(group, world):
        async with Client(group.nodes[node_id].address, local_address=group.client_host,
                          timeout_seconds=config.operation_timeout_seconds) as client:
            nodes = Nodes({node_id: client}, random.Random(node_id), config.operation_timeout_seconds)
            for key in keys:
                for attempt in range(FINAL_READ_ATTEMPTS):
                    process = f"final-{node_id}-{attempt}"
                    history.invoke(process, function, key, None)
                    outcome = await workload.run(nodes, -node_id, function, key, None)
                    history.write_event(process, outcome.type, function, key, outcome.value)
                    if outcome.type == "ok":
                        break


async def _converged_states(group: GroupProcesses, world: World, workload: Workload,
                            keys: list[str], config: RunConfig) -> dict[int, dict]:
    """Each live node's own state per key, polled until all agree or time runs out."""
    states: dict[int, dict] = {}
    with trio.move_on_after(config.recovery_seconds):
        while True:
            for node_id in _live(group, world):
                try:
                    async with Client(group.nodes[node_id].address,
                                      local_address=group.client_host) as client:
                        states[node_id] = await workload.node_state(client, keys, timeout=5.0)
                except KvError:
                    states.pop(node_id, None)
            if len(states) == len(_live(group, world)) and len({repr(s) for s in states.values()}) <= 1:
                break
            await trio.sleep(RECOVERY_POLL_SECONDS)
    return states


def _judge(config: RunConfig, group: GroupProcesses, workload: Workload, record: dict,
           schedule) -> int:
    out = config.out
    nemesis_events = read_nemesis_log(out / "nemesis.jsonl")
    operations = checks.history_operations(out / "history.jsonl")
    # What the clients did, for availability, plots and counts: the history's
    # operations and those left out of it.
    in_workload = [op for op in operations if not str(op.process).startswith("final-")]
    in_workload += record["left_out"]
    results = [
        checks.check_linearizable(operations, workload.model, config.check_budget_seconds,
                                  out / "timeline.html"),
        checks.check_no_lost_writes(workload.observations, record["final_states"], workload.name),
        checks.check_converged(record["final_states"], record["keys"]),
        checks.check_no_crashes({node_id: node.log_path for node_id, node in group.nodes.items()},
                                nemesis_events, record["stop_exit_codes"]),
        checks.check_recovered(record["recovery"]),
        checks.check_availability(in_workload, nemesis_events, config.availability_minimum,
                                  (record["started_ns"], record["ended_ns"])),
    ]
    title = config.describe()
    plots = []
    try:
        plots = [path.name for path in _write_plots(out, in_workload, nemesis_events, record, title)]
    except ImportError as error:
        print(f"jepsen run: no plots ({error}; pip install matplotlib)", file=sys.stderr)
    passed = [result.passed for result in results]
    verdict = "fail" if False in passed else "unknown" if None in passed else "pass"
    counts: dict[str, int] = {}
    for operation in in_workload:
        name = f"{operation.function} {operation.status}"
        counts[name] = counts.get(name, 0) + 1
    summary = {
        "verdict": verdict,
        "linearizability": results[0].details["verdict"],
        "config": {**dataclasses.asdict(config), "out": str(config.out)},
        "checks": {result.name: result.to_json() for result in results},
        "operations": dict(sorted(counts.items())),
        "left_out_of_history": len(record["left_out"]),
        "faults": [dataclasses.asdict(fault) for fault in schedule],
        "nemesis_notes": [event for event in nemesis_events if event["fault"] in ("refused", "crash")
                          or event["phase"] in ("skipped",) or event["fault"] == "corrupt"],
        "recovery": record["recovery"],
        "stop_exit_codes": record["stop_exit_codes"],
        "plots": plots,
        "workload_seconds": round((record["ended_ns"] - record["started_ns"]) / 1e9, 3),
    }
    (out / "verdict.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    _print_table(title, results, verdict, counts)
    if verdict == "fail":
        return EXIT_FAILED
    if verdict == "unknown":
        return EXIT_NOT_DONE
    return EXIT_PASSED


def _write_plots(out: Path, operations, nemesis_events, record, title):
    from .plots import write_plots

    return write_plots(out, operations, nemesis_events, record["started_ns"], record["ended_ns"], title)


def _print_table(title: str, results: list[checks.CheckOutcome], verdict: str,
                 counts: dict[str, int]) -> None:
    print(f"\n{title}")
    print(f"{'check':<16} {'result':<8} summary")
    for result in results:
        mark = {True: "PASS", False: "FAIL", None: "UNKNOWN"}[result.passed]
        print(f"{result.name:<16} {mark:<8} {result.summary}")
    total = sum(counts.values())
    ok = sum(count for name, count in counts.items() if name.endswith(" ok"))
    print(f"{'operations':<16} {'':<8} {total} ({ok} ok): "
          + ", ".join(f"{name} {count}" for name, count in counts.items()))
    print(f"verdict: {verdict}")
