"""Helpers for the single-node tests: drive the engine by hand, serve a node
in-process, talk raw frames, and poll conditions with deadlines.

`EngineDriver` plays the server's committer without trio: `submit` hands a
request to the engine and returns its Outcome; `commit` cuts and syncs the
open batch; `do` is both, the way a client sees one request (its answer,
or the KvError it raised).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable

import trio

from kvsvr.core.engine import Engine, Outcome, Result
from kvsvr.core.records import append_row_id
from kvsvr.core.requests import parse_request
from kvsvr.protocol.errors import KvError
from kvsvr.protocol.limits import DEFAULT_LIMITS, Limits
from kvsvr.protocol.wire import FrameDecoder, decode_answer, encode_frame
from kvsvr.shell.server import Node
from kvsvr.storage import MemoryStorage, Storage

POLL_INTERVAL_SECONDS = 0.01
WAIT_TIMEOUT_SECONDS = 10.0


class EngineDriver:
    """An Engine on a storage, committed by hand."""

    def __init__(self, storage: Storage | None = None, limits: Limits = DEFAULT_LIMITS):
        self.storage = storage if storage is not None else MemoryStorage()
        self.limits = limits
        self.engine = Engine(self.storage, limits)

    def submit(self, op: str, **fields) -> Outcome:
        """Parse and execute one request; its answer may wait for a generation."""
        return self.engine.execute(parse_request({"op": op, **fields}, self.limits))

    def commit(self) -> int | None:
        """Cut the open batch and sync it; returns its generation (None: nothing open)."""
        batch = self.engine.take_batch()
        if batch is None:
            return None
        generation, writes = batch
        self.storage.write(writes, True)
        self.engine.batch_synced(generation, len(writes))
        return generation

    def commit_through(self, generation: int) -> None:
        while self.engine.synced_generation < generation:
            assert self.commit() is not None, f"generation {generation} was never cut"

    @staticmethod
    def answer(outcome: Outcome) -> Result:
        """The answer of an outcome whose generation is synced."""
        return outcome.result() if callable(outcome.result) else outcome.result

    def do(self, op: str, **fields) -> Result:
        """One request as a client sees it: executed, committed, answered."""
        outcome = self.submit(op, **fields)
        self.commit_through(outcome.generation)
        return self.answer(outcome)


def wait_until(condition: Callable[[], bool], what: str,
               timeout_seconds: float = WAIT_TIMEOUT_SECONDS) -> None:
    """Poll `condition` until it holds, or fail naming `what`."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds}s waiting for {what}")
        time.sleep(POLL_INTERVAL_SECONDS)


async def wait_until_async(condition: Callable[[], bool], what: str,
                           timeout_seconds: float = WAIT_TIMEOUT_SECONDS) -> None:
    with trio.move_on_after(timeout_seconds):
        while not condition():
            await trio.sleep(POLL_INTERVAL_SECONDS)
        return
    raise AssertionError(f"timed out after {timeout_seconds}s waiting for {what}")


@contextlib.asynccontextmanager
async def serving_node(
    storage: Storage | None = None, limits: Limits = DEFAULT_LIMITS,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[tuple[Node, str]]:
    """A Node serving on a free loopback port inside this trio run (with TLS when
    given a server context); yields (node, address)."""
    node = Node(storage if storage is not None else MemoryStorage(), limits, tls)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(node.serve, "127.0.0.1", 0)
        yield node, addresses[0]
        nursery.cancel_scope.cancel()


def request_frame(request_id: int, op: str, **fields) -> bytes:
    return encode_frame({"id": request_id, "op": op, **fields})


async def open_raw(address: str) -> trio.SocketStream:
    host, port = address.rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def read_answers(
    stream: trio.SocketStream, count: int | None = None,
    timeout_seconds: float = WAIT_TIMEOUT_SECONDS,
) -> tuple[list[dict], bool]:
    """Read answer frames until `count` arrived or the node closed the connection.

    Returns the decoded answers and whether the connection was closed.
    """
    decoder = FrameDecoder(DEFAULT_LIMITS.frame_size_max_bytes)
    answers: list[dict] = []
    with trio.fail_after(timeout_seconds):
        while count is None or len(answers) < count:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return answers, True
            if not data:
                return answers, True
            decoder.feed(data)
            while (body := decoder.next_body()) is not None:
                answers.append(decode_answer(body))
    return answers, False


async def exchange(address: str, data: bytes, count: int | None = None) -> tuple[list[dict], bool]:
    """Send raw bytes on a fresh connection, then read answers (see read_answers)."""
    stream = await open_raw(address)
    async with stream:
        await stream.send_all(data)
        return await read_answers(stream, count)


def blocking_exchange(address: str, data: bytes, timeout_seconds: float = 10.0) -> list[dict]:
    """Send raw bytes on a fresh blocking socket, half-close, read answers until EOF."""
    host, port = address.rsplit(":", 1)
    decoder = FrameDecoder(DEFAULT_LIMITS.frame_size_max_bytes)
    answers: list[dict] = []
    with socket.create_connection((host, int(port)), timeout=timeout_seconds) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node closed first (a framing error); what it answered is still readable
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            decoder.feed(chunk)
            while (body := decoder.next_body()) is not None:
                answers.append(decode_answer(body))
    return answers


class AcknowledgedWrites:
    """What clients were told, to check against what a node holds after a crash.

    `versions[key][version] = value`: an acknowledged put (or a read that
    returned that value at that version: it was answered, so it must be durable).
    `appends[table][version] = value`: an acknowledged append.
    `attempted[key]`: every value ever sent to `key`, acknowledged or not (an
    unacknowledged write may or may not have landed; either is correct).
    """

    def __init__(self) -> None:
        self.versions: dict[bytes, dict[int, bytes]] = {}
        self.appends: dict[bytes, dict[int, bytes]] = {}
        self.attempted: dict[bytes, set[bytes]] = {}

    def attempt(self, key: bytes, value: bytes) -> None:
        self.attempted.setdefault(key, set()).add(value)

    def acknowledge(self, key: bytes, version: int, value: bytes) -> None:
        known = self.versions.setdefault(key, {})
        assert known.get(version, value) == value, f"two values acknowledged at {key!r}@{version}"
        known[version] = value

    def acknowledge_append(self, table: bytes, version: int, value: bytes) -> None:
        known = self.appends.setdefault(table, {})
        assert version not in known, f"two appends acknowledged at {table!r}@{version}"
        known[version] = value

    @property
    def count(self) -> int:
        return sum(map(len, self.versions.values())) + sum(map(len, self.appends.values()))


def acknowledged_write_problems(
    acknowledged: AcknowledgedWrites,
    stored: dict[bytes, tuple[int, bytes | None]],
    table_rows: dict[bytes, list],
) -> list[str]:
    """Every way the stored state fails to hold what was acknowledged ([] when it holds).

    `stored[key] = (version, value)` as read back; `table_rows[table]` is the
    full sync from version 0 (rows as `[row_id, version, value]`).
    """
    problems = []
    for key, versions in sorted(acknowledged.versions.items()):
        highest = max(versions)
        version, value = stored.get(key, (0, None))
        if version < highest:
            problems.append(f"{key!r}: acknowledged version {highest}, stored {version} (lost)")
        elif version == highest and value != versions[highest]:
            problems.append(f"{key!r}@{version}: stored {value!r}, acknowledged {versions[highest]!r}")
        elif version > highest and value not in acknowledged.attempted.get(key, ()):
            problems.append(f"{key!r}@{version}: stored {value!r}, which no client ever sent")
    for table, appends in sorted(acknowledged.appends.items()):
        rows = table_rows.get(table, [])
        row_versions = [row[1] for row in rows]
        if row_versions != sorted(set(row_versions)):
            problems.append(f"{table!r}: sync is not in strict version order: {row_versions}")
        by_version = {row[1]: row for row in rows}
        for version, value in sorted(appends.items()):
            row = by_version.get(version)
            if row is None:
                problems.append(f"{table!r}: acknowledged append at version {version} is missing")
            elif row[2] != value or row[0] != append_row_id(version):
                problems.append(f"{table!r}@{version}: row {row!r}, acknowledged {value!r}")
        sent = acknowledged.attempted.get(table, set())
        for row in rows:
            if row[1] not in appends and row[2] not in sent:
                problems.append(f"{table!r}: row {row!r} was never sent by a client")
    return problems


class Writers:
    """Concurrent writers on one Client that record every acknowledged write.

    Each writer loops: put to one of `keys`, or (every third write) append to
    `table`, with a value unique to the run, writer and sequence number. A
    write that fails (the node went away) ends that writer: its outcome is
    unknown, and it stays only in `acknowledged.attempted`. `floors` holds the
    versions found after the last restart; an acknowledged version at or below
    its key's floor means versions went backwards.
    """

    def __init__(self, label: str, keys: list[bytes], table: bytes,
                 acknowledged: AcknowledgedWrites, floors: dict[bytes, int], acks_wanted: int):
        self.label = label.encode()
        self.keys = keys
        self.table = table
        self.acknowledged = acknowledged
        self.floors = floors
        self.acks_wanted = acks_wanted
        self.acks = 0
        self.in_flight = 0
        self.in_flight_when_stopped = 0
        self.version_problems: list[str] = []
        self._enough_acks = trio.Event()

    async def run_until(self, client, writer_count: int, stop_node: Callable[[], object]) -> None:
        """Run `writer_count` writers until `acks_wanted` acks, then call `stop_node`
        (blocking: SIGKILL, SIGTERM...) in a thread while their requests are in flight,
        and wait for every writer to notice."""
        async with trio.open_nursery() as nursery:
            for writer in range(writer_count):
                nursery.start_soon(self._write_until_failure, client, writer)
            with trio.fail_after(60):
                await self._enough_acks.wait()
            self.in_flight_when_stopped = self.in_flight
            await trio.to_thread.run_sync(stop_node)

    async def _write_until_failure(self, client, writer: int) -> None:
        sequence = 0
        while True:
            sequence += 1
            value = b"%s-writer%d-%d" % (self.label, writer, sequence)
            appending = sequence % 3 == 0
            key = self.table if appending else self.keys[(writer + sequence) % len(self.keys)]
            self.acknowledged.attempt(key, value)
            self.in_flight += 1
            try:
                if appending:
                    version = await client.append(key, value)
                else:
                    version = await client.put(key, value)
            except KvError:
                return  # the node is gone: this write's outcome is unknown
            finally:
                self.in_flight -= 1
            if appending:
                self.acknowledged.acknowledge_append(key, version, value)
            else:
                self.acknowledged.acknowledge(key, version, value)
            if version <= self.floors.get(key, 0):
                self.version_problems.append(
                    f"{key!r}: version {version} after a restart that found "
                    f"{self.floors[key]} (versions went backwards)"
                )
            self.acks += 1
            if self.acks >= self.acks_wanted:
                self._enough_acks.set()


async def read_back(client, keys: list[bytes], table: bytes, page_rows: int = 64):
    """What a node holds: ({key: (version, value)}, {table: full sync rows}, {key: version})."""
    stored = {}
    for key in keys:
        item = await client.get(key)
        stored[key] = (item.version, item.value) if item else (0, None)
    rows, since = [], 0
    while True:
        page = await client.sync(table, since, limit=page_rows)
        rows += [[row.row_id, row.version, row.value] for row in page.rows]
        since = page.version
        if not page.more:
            break
    versions = {key: version for key, (version, _) in stored.items()}
    versions[table] = since
    return stored, {table: rows}, versions
