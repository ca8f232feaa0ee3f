"""Closed-loop load for one node, and the bare trio echo baseline beside it.

Theory. `concurrency` tasks share `connections` clients in one process;
each task sends one request, waits for its answer, and sends the next
(a closed loop), so exactly `concurrency` requests are in flight and the
offered load adapts to the node's speed instead of queueing without bound.
Every task stops sending once the duration has passed and finishes the
request it has in flight: the load stops by itself, and the elapsed time
counted runs until the last answer arrived.

Each successful operation contributes one latency sample (perf_counter
around the call), kept by kind (get, put) so a mixed run shows both;
errors are counted by code and not sampled. Throughput
is operations answered without error divided by the elapsed time.

The echo baseline runs a bare trio echo server in this process and a
pipelined client that frames, checksums and CBOR-decodes like the real
client, with frames the size of a put request. It is the ceiling this
runtime and framing allow on this machine: the node's figures are read
against it. Server and client share one process (one core) there, while
`kvctl bench` against a node uses two processes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import trio

from kvsvr.client import Client
from kvsvr.protocol.errors import KvError
from kvsvr.protocol.limits import DEFAULT_LIMITS
from kvsvr.protocol.wire import REQUEST_ID_MAX, FrameDecoder, decode_body, encode_frame
from kvsvr.shell.outgoing import Outgoing

WORKLOADS = ("put", "get", "mixed")
KEY_PREFIX = b"bench/"
# The percentiles every report gives, as (name, fraction).
PERCENTILES = (("p50", 0.50), ("p99", 0.99), ("p999", 0.999))
_ECHO_RECEIVE_SIZE_BYTES = 256 * 1024
_VALUE_SEED = 20240601


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str  # one of WORKLOADS
    concurrency: int = 64
    value_size_bytes: int = 100
    key_count: int = 10_000
    duration_seconds: float = 10.0
    read_fraction: float = 0.5  # mixed only: the share of gets
    connections: int = 1
    preload: bool = True  # write every key first (gets then find values)

    def __post_init__(self) -> None:
        if self.name not in WORKLOADS:
            raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, not {self.name!r}")
        if min(self.concurrency, self.key_count, self.connections) < 1:
            raise ValueError("concurrency, key count and connections must be at least 1")
        if self.value_size_bytes < 0 or self.duration_seconds <= 0:
            raise ValueError("value size must be >= 0 and duration > 0")
        if not 0.0 <= self.read_fraction <= 1.0:
            raise ValueError("read fraction must be in [0, 1]")

    @property
    def reads_share(self) -> float:
        return {"put": 0.0, "get": 1.0}.get(self.name, self.read_fraction)


# What an operation reports it did; a get that found no value is a miss.
GET = "get"
GET_MISS = "get_miss"
PUT = "put"
ECHO = "echo"


@dataclasses.dataclass
class Recorder:
    """What the loop measured: latency samples by operation kind, errors by code."""

    latencies_by_kind: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    errors: Counter = dataclasses.field(default_factory=Counter)
    elapsed_seconds: float = 0.0

    def samples(self, *kinds: str) -> list[float]:
        """Latency samples of the given kinds (all kinds if none given), sorted."""
        chosen = kinds or tuple(self.latencies_by_kind)
        return sorted(
            sample for kind in chosen for sample in self.latencies_by_kind.get(kind, ())
        )

    @property
    def misses(self) -> int:
        return len(self.latencies_by_kind.get(GET_MISS, ()))


@dataclasses.dataclass(frozen=True)
class Report:
    """One run's figures, printable for people and as one JSON object."""

    title: str
    parameters: dict
    recorder: Recorder
    preload_seconds: float | None = None
    # Writes the group's coordinators answered during the run, by path
    # ("fast_path", "prepared"); None when the target does not count them.
    write_paths: dict[str, int] | None = None

    @property
    def fast_path_share(self) -> float | None:
        if not self.write_paths:
            return None
        return self.write_paths.get("fast_path", 0) / sum(self.write_paths.values())

    @property
    def operations(self) -> int:
        return sum(map(len, self.recorder.latencies_by_kind.values()))

    @property
    def ops_per_second(self) -> float:
        elapsed = self.recorder.elapsed_seconds
        return self.operations / elapsed if elapsed > 0 else 0.0

    def latency_ms(self, *kinds: str) -> dict[str, float | None]:
        """Percentiles and max over the samples of `kinds` (default: every operation)."""
        samples = self.recorder.samples(*kinds)
        summary: dict[str, float | None] = {
            name: percentile(samples, fraction) for name, fraction in PERCENTILES
        }
        summary["max"] = samples[-1] * 1000 if samples else None
        return summary

    def to_json(self) -> dict:
        result = dict(self.parameters)
        result.update(
            elapsed_seconds=round(self.recorder.elapsed_seconds, 3),
            operations=self.operations,
            ops_per_second=round(self.ops_per_second, 1),
            misses=self.recorder.misses,
            errors=dict(self.recorder.errors),
            latency_ms=_rounded(self.latency_ms()),
        )
        if self.parameters.get("workload") == "mixed":
            result["latency_ms_get"] = _rounded(self.latency_ms(GET, GET_MISS))
            result["latency_ms_put"] = _rounded(self.latency_ms(PUT))
        if self.preload_seconds is not None:
            result["preload_seconds"] = round(self.preload_seconds, 3)
        if self.write_paths is not None:
            result["writes_by_path"] = dict(self.write_paths)
            share = self.fast_path_share
            result["fast_path_share"] = None if share is None else round(share, 4)
        return result

    def lines(self) -> list[str]:
        recorder = self.recorder
        lines = [self.title]
        if self.preload_seconds is not None:
            lines.append(f"  preloaded {self.parameters['keys']} keys in {self.preload_seconds:.2f} s")
        lines.append(
            f"  {self.operations} ops in {recorder.elapsed_seconds:.2f} s: "
            f"{self.ops_per_second:,.0f} ops/s"
        )
        if recorder.misses:
            lines.append(f"  gets that found no value: {recorder.misses}")
        errors = ", ".join(f"{code} {count}" for code, count in sorted(recorder.errors.items()))
        lines.append(f"  errors: {errors or 'none'}")
        lines.append(f"  latency ms: {_latency_line(self.latency_ms())}")
        if self.parameters.get("workload") == "mixed":
            lines.append(f"    gets: {_latency_line(self.latency_ms(GET, GET_MISS))}")
            lines.append(f"    puts: {_latency_line(self.latency_ms(PUT))}")
        if self.fast_path_share is not None:
            paths = self.write_paths
            lines.append(
                f"  writes on the fast path: {self.fast_path_share:.1%} "
                f"({paths.get('fast_path', 0)} of {sum(paths.values())}; the rest needed a Prepare)"
            )
        return lines


def _rounded(latency: dict[str, float | None]) -> dict[str, float | None]:
    return {name: None if value is None else round(value, 3) for name, value in latency.items()}


def _latency_line(latency: dict[str, float | None]) -> str:
    return "  ".join(
        f"{name} {'-' if value is None else f'{value:.2f}'}" for name, value in latency.items()
    )


def percentile(sorted_samples: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_samples:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_samples)))
    return sorted_samples[rank - 1] * 1000


# An operation the loop drives: given the task's RNG, do one request and
# return its kind (GET, GET_MISS, PUT, ECHO).
Operation = Callable[[random.Random], Awaitable[str]]


async def drive_closed_loop(
    operations: Sequence[Operation], concurrency: int, duration_seconds: float
) -> Recorder:
    """Run `concurrency` tasks, task i looping on operations[i % len], for the duration."""
    recorder = Recorder()
    by_kind = recorder.latencies_by_kind
    started = time.perf_counter()
    stop_at = started + duration_seconds

    async def loop(operation: Operation, rng: random.Random) -> None:
        clock = time.perf_counter
        now = clock()
        while now < stop_at:
            try:
                kind = await operation(rng)
            except KvError as error:
                recorder.errors[error.code] += 1
                now = clock()
                continue
            finished = clock()
            samples = by_kind.get(kind)
            if samples is None:
                samples = by_kind[kind] = []
            samples.append(finished - now)
            now = finished

    async with trio.open_nursery() as nursery:
        for task_index in range(concurrency):
            operation = operations[task_index % len(operations)]
            nursery.start_soon(loop, operation, random.Random(task_index))
    recorder.elapsed_seconds = time.perf_counter() - started
    return recorder


# -- against a node ---------------------------------------------------------------


def bench_keys(key_count: int) -> list[bytes]:
    return [KEY_PREFIX + b"%08d" % index for index in range(key_count)]


def bench_value(value_size_bytes: int) -> bytes:
    return random.Random(_VALUE_SEED).randbytes(value_size_bytes)


async def preload(clients: Sequence[Client], keys: Sequence[bytes], value: bytes,
                  concurrency: int) -> float:
    """Put every key once, `concurrency` at a time; returns the seconds it took.

    A failed put raises its KvError: a benchmark of gets on missing keys
    would measure nothing useful.
    """
    started = time.perf_counter()
    remaining = iter(keys)
    failures: list[KvError] = []

    async def load(client: Client) -> None:
        for key in remaining:
            if failures:
                return
            try:
                await client.put(key, value)
            except KvError as error:
                failures.append(error)

    async with trio.open_nursery() as nursery:
        for task_index in range(min(concurrency, len(keys))):
            nursery.start_soon(load, clients[task_index % len(clients)])
    if failures:
        raise failures[0]
    return time.perf_counter() - started


def workload_operation(client: Client, workload: Workload, keys: Sequence[bytes],
                       value: bytes) -> Operation:
    key_count = len(keys)
    reads_share = workload.reads_share

    async def operation(rng: random.Random) -> str:
        key = keys[rng.randrange(key_count)]
        if reads_share and (reads_share == 1.0 or rng.random() < reads_share):
            return GET if await client.get(key) is not None else GET_MISS
        await client.put(key, value)
        return PUT

    return operation


async def run_workload(clients: Sequence[Client], workload: Workload, target: str) -> Report:
    """Connect every client, preload if asked, then drive the workload."""
    for client in clients:
        await client.ping()  # connection setup is not part of the measurement
    keys = bench_keys(workload.key_count)
    value = bench_value(workload.value_size_bytes)
    preload_seconds = None
    if workload.preload:
        preload_seconds = await preload(clients, keys, value, workload.concurrency)
    operations = [workload_operation(client, workload, keys, value) for client in clients]
    # The status calls use the clients' TLS settings (a node serving TLS
    # answers nothing else).
    ssl_context = clients[0].ssl_context if clients else None
    paths_before = await write_path_counts(target, ssl_context)
    recorder = await drive_closed_loop(
        operations, workload.concurrency, workload.duration_seconds
    )
    paths_after = await write_path_counts(target, ssl_context)
    write_paths = None
    if paths_before is not None and paths_after is not None:
        write_paths = dict(paths_after - paths_before)
    parameters = {
        "workload": workload.name,
        "target": target,
        "concurrency": workload.concurrency,
        "connections": workload.connections,
        "value_size_bytes": workload.value_size_bytes,
        "keys": workload.key_count,
        "duration_seconds": workload.duration_seconds,
    }
    if workload.name == "mixed":
        parameters["read_fraction"] = workload.read_fraction
    title = (
        f"{workload.name} against {target}: {workload.concurrency} in flight on "
        f"{_plural(workload.connections, 'connection')}, {workload.value_size_bytes}-byte values, "
        f"{workload.key_count} keys"
        + (f", {workload.read_fraction:.0%} gets" if workload.name == "mixed" else "")
    )
    return Report(title, parameters, recorder, preload_seconds, write_paths)


WRITE_PATH_FIELDS = {"writes_fast_path": "fast_path", "writes_prepared": "prepared"}


async def write_path_counts(target: str, ssl_context: ssl.SSLContext | None = None) -> Counter | None:
    """The writes every node of the target has coordinated, by path, summed
    from each node's status; None if a node does not report them (a single
    node has no Prepare) or cannot be asked."""
    totals: Counter = Counter()
    for address in target.split(","):
        try:
            async with Client(address, ssl_context=ssl_context) as client:
                status = await client.status()
        except (KvError, OSError):
            return None
        if not all(field in status for field in WRITE_PATH_FIELDS):
            return None
        for field, path in WRITE_PATH_FIELDS.items():
            totals[path] += status[field]
    return totals


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# -- the echo baseline ------------------------------------------------------------


async def _echo_connection(stream: trio.SocketStream) -> None:
    """The bare echo server: every byte received goes straight back."""
    try:
        while data := await stream.receive_some(_ECHO_RECEIVE_SIZE_BYTES):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


class EchoLink:
    """A pipelined framed client for the echo server: ids, one sender, one reader."""

    def __init__(self, stream: trio.SocketStream, nursery: trio.Nursery):
        self.stream = stream
        self._next_id = 1
        self._waiting: dict[int, trio.Event] = {}
        self._outgoing = Outgoing()
        nursery.start_soon(self._outgoing.send_forever, stream)
        nursery.start_soon(self._receive_forever)

    async def round_trip(self, body: dict) -> None:
        request_id = self._next_id
        self._next_id = 1 if request_id == REQUEST_ID_MAX else request_id + 1
        answered = trio.Event()
        self._waiting[request_id] = answered
        self._outgoing.add(encode_frame({**body, "id": request_id}))
        await answered.wait()

    async def _receive_forever(self) -> None:
        decoder = FrameDecoder(DEFAULT_LIMITS.frame_size_max_bytes)
        while data := await self.stream.receive_some(_ECHO_RECEIVE_SIZE_BYTES):
            decoder.feed(data)
            while (body := decoder.next_body()) is not None:
                self._waiting.pop(decode_body(body)["id"]).set()


async def run_echo(concurrency: int, duration_seconds: float, connections: int,
                   value_size_bytes: int) -> Report:
    """Drive a closed loop of frames through an in-process echo server."""
    body = {"op": "put", "key": bench_keys(1)[0], "value": bench_value(value_size_bytes)}
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, _echo_connection, 0, host="127.0.0.1")
        )
        host, port = listeners[0].socket.getsockname()[:2]
        links = [EchoLink(await trio.open_tcp_stream(host, port), nursery)
                 for _ in range(connections)]

        def echo_operation(link: EchoLink) -> Operation:
            async def operation(rng: random.Random) -> str:
                await link.round_trip(body)
                return ECHO

            return operation

        recorder = await drive_closed_loop(
            [echo_operation(link) for link in links], concurrency, duration_seconds
        )
        nursery.cancel_scope.cancel()
    parameters = {
        "workload": "echo",
        "target": "in-process trio echo server",
        "concurrency": concurrency,
        "connections": connections,
        "value_size_bytes": value_size_bytes,
        "duration_seconds": duration_seconds,
    }
    title = (
        f"echo baseline (bare trio echo server, same process): {concurrency} in flight on "
        f"{_plural(connections, 'connection')}, frames of a {value_size_bytes}-byte put"
    )
    return Report(title, parameters, recorder)
