"""Faults from outside the processes: partitions, kills, pauses, restarts, damaged disks.

Theory of operation. The nemesis changes the world the nodes live in and
never their code: it cuts TCP between node addresses with nftables, sends
SIGKILL, SIGSTOP and SIGCONT, and flips or cuts bytes in a stopped node's
files. It plays a schedule drawn from the run's seed before the run starts
(`draw_schedule`): quiet gaps and faults, one fault at a time, each with
its own seed for the choices it makes when it strikes (which nodes, which
shape of partition, which file), so a run replays as closely as real
processes allow.

`World` is the one record of what is broken now: nodes down, paused,
retired (refused to start on damaged data, and left down for good), and
node pairs cut. Every change is a line in the nemesis log with its time,
and whether some live node could still reach a majority: the runner
measures availability against that.

Partitions are rules in one nftables table of our own (`inet
kvsvr_jepsen_<pid>_<address block>`), matched on the pair of node
addresses and the group's port, so clients on their own address and other
groups on other ports are left alone. The rules name only this run's
node addresses, all in its own address block (127.<block>.0.0/24), so a
run in another block is never cut, whatever it does. Installing a partition replaces the whole table in
one `nft -f` transaction; healing deletes it; the runner deletes it again
at exit (finally and atexit). Without nft or root the partition nemesis
refuses to run (`firewall_problem`): it installs nothing itself.

Corruption (`corrupt_newest_file`) damages the newest WAL, SST or
MANIFEST of a stopped node: flip 16 bytes, or cut the file inside a record.
A node must then either start and serve the right data, or refuse to start
naming the file; it is never restarted with its data wiped, because an
acceptor that forgot its promises and votes can break safety for the whole
group. docs/jepsen.md records what each kind of damage did.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import trio

from .nodes import GroupProcesses, NodeProcess

NEMESES = ("partition", "kill", "pause", "restart-all", "corrupt")
PARTITION_SHAPES = ("halves", "isolated", "bridge", "ring")
CORRUPTIONS = ("flip-wal", "truncate-wal", "flip-sst", "truncate-sst", "flip-manifest")
NFT_TABLE_PREFIX = "kvsvr_jepsen"
NFT_TIMEOUT_SECONDS = 10.0

# Schedule shape: a quiet gap, then one fault, and again.
QUIET_SECONDS = (2.0, 6.0)
FAULT_SECONDS = {
    "partition": (3.0, 10.0),
    "kill": (1.0, 6.0),  # how long the node stays down
    "pause": (1.0, 6.0),
    "restart-all": (0.5, 3.0),  # how long every node stays down
    "corrupt": (0.5, 2.0),  # how long the damaged node stays down before its restart
}


class NemesisUnavailable(Exception):
    """A fault cannot be injected on this machine (no nft, not root)."""


@dataclasses.dataclass(frozen=True)
class Fault:
    start_seconds: float  # from the start of the workload
    kind: str
    duration_seconds: float
    seed: int  # for the choices the fault makes when it strikes


def draw_schedule(kinds: Iterable[str], run_seconds: float, rng: random.Random) -> list[Fault]:
    """Quiet gaps and faults, one at a time, filling `run_seconds`."""
    kinds = tuple(kinds)
    assert all(kind in NEMESES for kind in kinds), kinds
    schedule: list[Fault] = []
    moment = 0.0
    while kinds:
        moment += rng.uniform(*QUIET_SECONDS)
        kind = rng.choice(kinds)
        duration = rng.uniform(*FAULT_SECONDS[kind])
        if moment + duration > run_seconds:
            break
        schedule.append(Fault(round(moment, 3), kind, round(duration, 3), rng.getrandbits(32)))
        moment += duration
    return schedule


# -- partitions --------------------------------------------------------------


def draw_partition(node_ids: list[int], shape: str, rng: random.Random) -> set[frozenset[int]]:
    """The node pairs to cut for a partition of that shape.

    halves: a random minority against the rest. isolated: one node against
    all. bridge: two halves that only one node, in both, connects. ring:
    each node keeps its two neighbours on a random ring, so every node sees
    a majority but no two see the same one (with three nodes that is every
    link, so the ring falls back to a bridge).
    """
    nodes = list(node_ids)
    rng.shuffle(nodes)
    count = len(nodes)
    if shape == "halves":
        groups = [nodes[: count // 2], nodes[count // 2 :]]
    elif shape == "isolated":
        groups = [nodes[:1], nodes[1:]]
    elif shape == "bridge" or (shape == "ring" and count <= 3):
        bridge, others = nodes[0], nodes[1:]
        half = len(others) // 2
        del bridge  # the one node left connected to both halves
        return _cuts_between(others[:half], others[half:])
    elif shape == "ring":
        neighbours = {
            frozenset((nodes[index], nodes[(index + step) % count]))
            for index in range(count)
            for step in (1, -1)
        }
        return _all_pairs(nodes) - neighbours
    else:
        raise ValueError(f"unknown partition shape {shape!r}")
    return _cuts_between(*groups)


def _all_pairs(nodes: Iterable[int]) -> set[frozenset[int]]:
    nodes = list(nodes)
    return {frozenset((a, b)) for index, a in enumerate(nodes) for b in nodes[index + 1 :]}


def _cuts_between(left: Iterable[int], right: Iterable[int]) -> set[frozenset[int]]:
    return {frozenset((a, b)) for a in left for b in right}


def firewall_problem() -> str | None:
    """Why partitions can't be made here, or None when they can."""
    if shutil.which("nft") is None:
        return "nft (nftables) is not installed; .ci/run installs it (apt-get install nftables)"
    if os.geteuid() != 0:
        return "partitions need root: nft changes the firewall"
    try:
        probe = subprocess.run(
            ["nft", "list", "tables"], capture_output=True, text=True, timeout=NFT_TIMEOUT_SECONDS
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"nft cannot be run: {error}"
    if probe.returncode != 0:
        return f"nft cannot be used here: {probe.stderr.strip() or probe.returncode}"
    return None


def firewall_table(address_block: int) -> str:
    """Our nftables table: per process and address block, so no other run shares it."""
    return f"{NFT_TABLE_PREFIX}_{os.getpid()}_{address_block}"


def partition_rules(table: str, hosts: dict[int, str], port: int,
                    cuts: Iterable[frozenset[int]]) -> str:
    """An nft script that replaces `table` with one dropping the cut pairs.

    Each cut pair of nodes becomes four rules in each of the output and
    input chains (both directions; the group's port as destination or as
    source), each naming both node addresses and the port: no other
    traffic is ever matched.
    """
    lines = []
    for pair in sorted(tuple(sorted(pair)) for pair in cuts):
        a, b = (hosts[node] for node in pair)
        for source, destination in ((a, b), (b, a)):
            for port_field in ("dport", "sport"):
                lines.append(
                    f"    ip saddr {source} ip daddr {destination} tcp {port_field} {port} drop"
                )
    body = "\n".join(lines)
    chains = "\n".join(
        f"  chain {hook} {{\n    type filter hook {hook} priority 0; policy accept;\n{body}\n  }}"
        for hook in ("output", "input")
    )
    # "table X" then "delete table X": the delete never fails for a missing table.
    return f"table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n{chains}\n}}\n"


class Firewall:
    """One nftables table of our own: the current partition, replaced as a whole."""

    def __init__(self, hosts: dict[int, str], port: int, address_block: int = 0):
        problem = firewall_problem()
        if problem is not None:
            raise NemesisUnavailable(problem)
        block_prefix = f"127.{address_block}.0."
        assert all(host.startswith(block_prefix) for host in hosts.values()), (hosts, address_block)
        self.hosts = dict(hosts)
        self.port = port
        self.table = firewall_table(address_block)
        atexit.register(self.remove)

    def rules(self, cuts: Iterable[frozenset[int]]) -> str:
        return partition_rules(self.table, self.hosts, self.port, cuts)

    def cut(self, cuts: Iterable[frozenset[int]]) -> None:
        self._nft(["-f", "-"], self.rules(cuts))

    def remove(self) -> None:
        """Heal: delete our table (nothing happens if it is gone)."""
        self._nft(["-f", "-"], f"table inet {self.table}\ndelete table inet {self.table}\n")

    def _nft(self, arguments: list[str], script: str) -> None:
        result = subprocess.run(
            ["nft", *arguments], input=script, capture_output=True, text=True,
            timeout=NFT_TIMEOUT_SECONDS,
        )
        if result.returncode != 0:
            raise NemesisUnavailable(f"nft failed: {result.stderr.strip()}\n{script}")


# -- the state of the world --------------------------------------------------


class World:
    """What is broken now, and the log of every change to it."""

    def __init__(self, node_ids: Iterable[int], log_path: Path, clock: Callable[[], int]):
        self.node_ids = sorted(node_ids)
        self.majority = len(self.node_ids) // 2 + 1
        self.down: set[int] = set()
        self.paused: set[int] = set()
        self.retired: set[int] = set()  # refused to start: left down for good
        self.cuts: set[frozenset[int]] = set()
        self._clock = clock
        self._lock = threading.Lock()
        self._log = open(log_path, "a", encoding="utf-8")

    @property
    def live(self) -> list[int]:
        return [node for node in self.node_ids if node not in self.down | self.paused | self.retired]

    def majority_reachable(self) -> bool:
        """Some live node reaches a majority of members (itself included) over live links."""
        live = self.live
        return any(
            sum(1 for other in live if other == node or frozenset((node, other)) not in self.cuts)
            >= self.majority
            for node in live
        )

    def record(self, fault: str, phase: str, **detail) -> None:
        """One line in the nemesis log: what happened and what is broken now."""
        with self._lock:
            line = {
                "time": self._clock(),
                "fault": fault,
                "phase": phase,
                **detail,
                "down": sorted(self.down),
                "paused": sorted(self.paused),
                "retired": sorted(self.retired),
                "cuts": sorted(sorted(pair) for pair in self.cuts),
                "majority_reachable": self.majority_reachable(),
            }
            self._log.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._log.flush()

    def close(self) -> None:
        with self._lock:
            self._log.close()


def read_nemesis_log(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- damaged files ------------------------------------------------------------

WAL_BLOCK_BYTES = 32 * 1024
WAL_HEADER_BYTES = 7  # crc32 (4), length (2), type (1)
FLIP_BYTES = 16


def corrupt_newest_file(data_dir: Path, corruption: str, rng: random.Random) -> str:
    """Damage the newest file of one kind in a stopped node's data directory.

    Returns what was done, for the log. A cut WAL is cut inside a record:
    a WAL cut exactly between two records reads as a shorter, valid log,
    and nothing in the directory records how long it was (docs/jepsen.md).
    """
    action, kind = corruption.split("-", 1)
    target = _newest(data_dir, kind)
    if target is None:
        return f"no {kind} file in {data_dir}; nothing damaged"
    size = target.stat().st_size
    if size == 0:
        return f"{target.name} is empty; nothing damaged"
    if action == "flip":
        offset = rng.randrange(max(1, size - FLIP_BYTES))
        with open(target, "r+b") as damaged:
            damaged.seek(offset)
            original = damaged.read(FLIP_BYTES)
            damaged.seek(offset)
            damaged.write(bytes(byte ^ 0xFF for byte in original))
        return f"flipped {len(original)} bytes at offset {offset} of {target.name} ({size} bytes)"
    if kind == "wal":
        cut = _cut_inside_a_wal_record(target.read_bytes(), rng)
        if cut is None:
            return f"{target.name} holds no record to cut; nothing damaged"
    else:
        cut = rng.randrange(size)
    with open(target, "r+b") as damaged:
        damaged.truncate(cut)
    return f"cut {target.name} from {size} to {cut} bytes"


def _newest(data_dir: Path, kind: str) -> Path | None:
    def is_kind(path: Path) -> bool:
        if kind == "wal":
            return path.suffix == ".log"
        if kind == "sst":
            return path.suffix == ".sst"
        return path.name.startswith("MANIFEST-")

    files = [path for path in data_dir.iterdir() if path.is_file() and is_kind(path)]
    return max(files, key=lambda path: (path.stat().st_mtime_ns, path.name), default=None)


def wal_records(data: bytes) -> list[tuple[int, int]]:
    """(payload start, payload end) of every physical record of a RocksDB WAL:
    32 KiB blocks of records, each a 7-byte header (crc32c, u16 length, type)
    and its payload; zero padding ends a block."""
    records = []
    block_start = 0
    while block_start < len(data):
        position = block_start
        block_end = min(block_start + WAL_BLOCK_BYTES, len(data))
        while position + WAL_HEADER_BYTES <= block_end:
            length = int.from_bytes(data[position + 4 : position + 6], "little")
            record_type = data[position + 6]
            if record_type == 0 and length == 0:
                break  # zero padding: the rest of the block is empty
            payload_start = position + WAL_HEADER_BYTES
            records.append((payload_start, payload_start + length))
            position = payload_start + length
        block_start += WAL_BLOCK_BYTES
    return records


def _cut_inside_a_wal_record(data: bytes, rng: random.Random) -> int | None:
    """An offset strictly inside the payload of some physical WAL record."""
    insides = [
        (start + 1, min(end, len(data))) for start, end in wal_records(data) if end - start > 1
    ]
    insides = [(low, high) for low, high in insides if low < high]
    if not insides:
        return None
    low, high = rng.choice(insides)
    return rng.randrange(low, high)


# -- playing the schedule -----------------------------------------------------

NODE_WATCH_INTERVAL_SECONDS = 0.2
REFUSAL_LOG_LINES = 6


class Nemesis:
    """Plays a schedule against a group of node processes, keeping `World` true."""

    def __init__(self, group: GroupProcesses, world: World, firewall: Firewall | None,
                 partition_shapes: tuple[str, ...] = PARTITION_SHAPES):
        assert partition_shapes and set(partition_shapes) <= set(PARTITION_SHAPES), partition_shapes
        self.group = group
        self.world = world
        self.firewall = firewall
        self.partition_shapes = partition_shapes
        self.minority = (len(group.nodes) - 1) // 2

    async def play(self, schedule: list[Fault], started_at: float, stop_at: float) -> None:
        """Strike each fault at its time (trio clock), until `stop_at`; then heal."""
        try:
            for fault in schedule:
                if started_at + fault.start_seconds + fault.duration_seconds > stop_at:
                    break
                await trio.sleep_until(started_at + fault.start_seconds)
                await self.strike(fault)
        finally:
            with trio.CancelScope(shield=True):
                await self.heal()

    async def strike(self, fault: Fault) -> None:
        rng = random.Random(fault.seed)
        if fault.kind == "partition":
            await self._partition(fault, rng)
        elif fault.kind == "kill":
            await self._kill(fault, rng)
        elif fault.kind == "pause":
            await self._pause(fault, rng)
        elif fault.kind == "restart-all":
            await self._restart_all(fault)
        elif fault.kind == "corrupt":
            await self._corrupt(fault, rng)
        else:
            raise ValueError(f"unknown fault {fault.kind!r}")

    async def heal(self) -> None:
        """Everything back: links, paused nodes, stopped nodes (not retired ones)."""
        if self.firewall is not None and self.world.cuts:
            await trio.to_thread.run_sync(self.firewall.remove)
            self.world.cuts = set()
        for node_id in sorted(self.world.paused):
            self._node(node_id).process.send_signal(signal.SIGCONT)
        self.world.paused.clear()
        await self._start(sorted(self.world.down - self.world.retired), "heal")
        self.world.record("heal", "end")

    async def watch_nodes(self) -> None:
        """Record any node that exits when no fault stopped it (a crash)."""
        while True:
            for node_id, node in self.group.nodes.items():
                if node_id in self.world.down or node_id in self.world.retired:
                    continue
                if node.process is not None and node.process.poll() is not None:
                    self.world.down.add(node_id)
                    self.world.record(
                        "crash", "note", nodes=[node_id], exit_code=node.process.returncode,
                        log_tail=node.log_tail(REFUSAL_LOG_LINES),
                    )
            await trio.sleep(NODE_WATCH_INTERVAL_SECONDS)

    def _node(self, node_id: int) -> NodeProcess:
        return self.group.nodes[node_id]

    def _candidates(self) -> list[int]:
        return [node for node in self.world.node_ids if node not in self.world.retired]

    async def _partition(self, fault: Fault, rng: random.Random) -> None:
        assert self.firewall is not None, "the runner checks nft before it plays partitions"
        shape = rng.choice(self.partition_shapes)
        cuts = draw_partition(self.world.node_ids, shape, rng)
        await trio.to_thread.run_sync(self.firewall.cut, cuts)
        self.world.cuts = cuts
        self.world.record("partition", "start", shape=shape)
        await trio.sleep(fault.duration_seconds)
        await trio.to_thread.run_sync(self.firewall.remove)
        self.world.cuts = set()
        self.world.record("partition", "end", shape=shape)

    async def _kill(self, fault: Fault, rng: random.Random) -> None:
        candidates = self._candidates()
        targets = sorted(rng.sample(candidates, rng.randint(1, min(self.minority, len(candidates)))))
        for node_id in targets:
            self.world.down.add(node_id)  # before the signal, so the watcher expects the exit
            self._node(node_id).kill()
        self.world.record("kill", "start", nodes=targets)
        await trio.sleep(fault.duration_seconds)
        await self._start(targets, "kill")
        self.world.record("kill", "end", nodes=targets)

    async def _pause(self, fault: Fault, rng: random.Random) -> None:
        candidates = self._candidates()
        targets = sorted(rng.sample(candidates, rng.randint(1, min(self.minority, len(candidates)))))
        for node_id in targets:
            self._node(node_id).process.send_signal(signal.SIGSTOP)
            self.world.paused.add(node_id)
        self.world.record("pause", "start", nodes=targets)
        await trio.sleep(fault.duration_seconds)
        for node_id in targets:
            self._node(node_id).process.send_signal(signal.SIGCONT)
            self.world.paused.discard(node_id)
        self.world.record("pause", "end", nodes=targets)

    async def _restart_all(self, fault: Fault) -> None:
        targets = self._candidates()
        for node_id in targets:
            self.world.down.add(node_id)
            self._node(node_id).kill()
        self.world.record("restart-all", "start", nodes=targets)
        await trio.sleep(fault.duration_seconds)
        await self._start(targets, "restart-all")
        self.world.record("restart-all", "end", nodes=targets)

    async def _corrupt(self, fault: Fault, rng: random.Random) -> None:
        if len(self.world.retired) >= self.minority:
            self.world.record("corrupt", "skipped", reason="a minority of nodes is already retired")
            return
        node_id = rng.choice(self._candidates())
        node = self._node(node_id)
        self.world.down.add(node_id)
        node.kill()
        corruption = rng.choice(CORRUPTIONS)
        done = await trio.to_thread.run_sync(corrupt_newest_file, node.data_dir, corruption, rng)
        self.world.record("corrupt", "start", nodes=[node_id], corruption=corruption, damage=done)
        await trio.sleep(fault.duration_seconds)
        await self._start([node_id], "corrupt")
        self.world.record("corrupt", "end", nodes=[node_id])

    async def _start(self, node_ids: list[int], after: str) -> None:
        """Start nodes at once; a node that will not start is retired, and says why."""

        async def start_one(node_id: int) -> None:
            node = self._node(node_id)
            try:
                await trio.to_thread.run_sync(node.start)
            except (RuntimeError, TimeoutError) as error:
                if node.process is not None and node.process.poll() is None:
                    node.kill()
                self.world.retired.add(node_id)
                self.world.record(
                    "refused", "note", nodes=[node_id], after=after,
                    message=str(error).splitlines()[-REFUSAL_LOG_LINES:],
                )
            finally:
                self.world.down.discard(node_id)

        async with trio.open_nursery() as nursery:
            for node_id in node_ids:
                nursery.start_soon(start_one, node_id)
