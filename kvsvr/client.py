"""The client library: async (trio) with pipelining, and a thin sync wrapper.

    async with Client("127.0.0.1:7420") as client:
        version = await client.put(b"k", b"v")
        item = await client.get(b"k")          # Item(value=b"v", version=1), or None

Theory. One connection per node carries many requests in flight: each
request gets an id, frames queued in the same scheduling step go out in
one send, and a reader task hands each answer to the call waiting on its
id. Every call has a deadline (`timeout_seconds`, per call or for the whole
client).

What a failure means (docs/protocol-rules.md invariant 6):
- `Timeout` (the deadline passed, or the connection broke after the
  request was sent): the outcome is unknown. A write may or may not have
  taken effect; never read this as "failed".
- every other error (`ConditionFailed`, `Overloaded`, `Unavailable` when
  no connection could be made...) means the operation did not take effect.

Routing: every call goes through `_route(key)`. Given the addresses of a
replica group (in node-id order), it sends each key to its preferred
coordinator, `addresses[crc32c(key) % n]`, so that node keeps the key's
promise and writes take the one-round-trip fast path; when that node
can't be reached it tries the next. Routing keys to the right group of a
cluster replaces `_route` and leaves call sites alone.

TLS: `Client(..., cacert="ca.pem")` (or `ssl_context=`) connects with TLS,
verifying that each node's certificate chains to the CA and names the
address dialled. A node serving TLS answers a plain connection with one
`unavailable` frame (id 0) and closes it, so a client without TLS fails
at once, with a message saying so (kvsvr/shell/tls.py).
"""

from __future__ import annotations

import dataclasses
import math
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import crc32c
import trio

from kvsvr.protocol.addresses import DEFAULT_ADDRESS, format_address, parse_address_list
from kvsvr.protocol.errors import KvError, Timeout, Unavailable, error_from_wire
from kvsvr.protocol.limits import DEFAULT_LIMITS
from kvsvr.protocol.wire import (
    REQUEST_ID_MAX,
    FrameDecoder,
    FrameError,
    decode_answer,
    encode_frame,
)
from kvsvr.shell.outgoing import Outgoing
from kvsvr.shell.tls import client_context, connect_tls

DEFAULT_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5.0
_RECEIVE_SIZE_BYTES = 256 * 1024
_UNSET: Any = object()


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    value: bytes
    version: int


@dataclasses.dataclass(frozen=True, slots=True)
class ScanItem:
    key: bytes
    value: bytes | None  # None for a table key
    version: int
    kind: str  # "kv" or "table"


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    row_id: bytes
    version: int  # the table version that last changed the row
    value: bytes | None  # None: deleted at `version` (sync answers only)


@dataclasses.dataclass(frozen=True, slots=True)
class SyncResult:
    version: int  # sync again from this version to continue
    rows: list[Row]
    more: bool  # True: stopped at a limit; `version` is below the table's


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    items: list
    resume: bytes | None  # pass back to continue; None: nothing more


class _Link:
    """One connection to one node, with requests in flight on it."""

    def __init__(self, address: str, stream: trio.abc.Stream, nursery: trio.Nursery):
        self.address = address
        self.stream = stream
        self.broken: KvError | None = None
        self._next_id = 1
        self._waiting: dict[int, list] = {}  # id -> [event, answer]
        self._outgoing = Outgoing()
        nursery.start_soon(self._send_forever)
        nursery.start_soon(self._receive_forever)

    async def request(self, body: dict, deadline: float) -> dict:
        if self.broken is not None:
            raise Unavailable(f"connection to {self.address} is broken: {self.broken.message}")
        request_id = self._next_id
        self._next_id = 1 if request_id == REQUEST_ID_MAX else request_id + 1
        body["id"] = request_id
        self._outgoing.add(encode_frame(body))
        slot = [trio.Event(), None]
        self._waiting[request_id] = slot
        with trio.move_on_at(deadline):
            await slot[0].wait()
        self._waiting.pop(request_id, None)
        answer = slot[1]
        if answer is None:
            raise Timeout(
                f"{body.get('op')}: no answer from {self.address} before the deadline; "
                "the outcome is unknown"
            )
        return answer

    async def _send_forever(self) -> None:
        try:
            await self._outgoing.send_forever(self.stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._fail(f"send failed: {error}")

    async def _receive_forever(self) -> None:
        decoder = FrameDecoder(DEFAULT_LIMITS.frame_size_max_bytes)
        try:
            while True:
                data = await self.stream.receive_some(_RECEIVE_SIZE_BYTES)
                if not data:
                    self._fail("the node closed the connection")
                    return
                decoder.feed(data)
                while (body := decoder.next_body()) is not None:
                    self._on_answer(decode_answer(body))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._fail(f"receive failed: {error}")
        except KvError as error:  # FrameError or a malformed answer: the stream is unusable
            self._fail(f"bad answer from the node: {error.message}")

    def _on_answer(self, message: dict) -> None:
        request_id = message["id"]
        if "error" in message and request_id == 0:
            # The node could not read one of our frames, or refused the
            # connection, and closes. A refusal (`overloaded`: too many
            # connections; `unavailable`: TLS only) comes before the node reads
            # a byte, so nothing sent on this connection took effect; after a
            # framing error, requests in flight have unknown outcomes.
            error = error_from_wire(message["error"])
            definite = error.code in ("overloaded", "unavailable")
            self._fail(error.message, error if definite else None)
            return
        slot = self._waiting.get(request_id)
        if slot is not None:
            slot[1] = message
            slot[0].set()

    def _fail(self, reason: str, definite: KvError | None = None) -> None:
        """Mark the link broken; calls waiting on it time out as indeterminate, or
        fail with `definite` when the node said none of them took effect."""
        if self.broken is None:
            self.broken = Unavailable(reason)
        if definite is not None:
            error = definite.to_wire()
        else:
            message = f"connection to {self.address} lost ({reason}); the outcome is unknown"
            error = {"code": "timeout", "message": message}
        for request_id, slot in list(self._waiting.items()):
            slot[1] = {"id": request_id, "error": error}
            slot[0].set()
        self._waiting.clear()

    async def aclose(self) -> None:
        self.broken = self.broken or Unavailable("closed by the client")
        await self.stream.aclose()


class Client:
    """An async client for one KVSvr node (a replica group, once routing lands)."""

    def __init__(
        self,
        addresses: str | None = None,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        local_address: str | None = None,
        cacert: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ):
        # local_address: the address connections come from (the fault suite
        # gives clients their own, so cutting node A from node B leaves
        # clients alone).
        self.local_address = local_address
        # cacert: a PEM file of the CA certificates the nodes' certificates
        # chain to (connect with TLS); ssl_context: a context made elsewhere.
        if cacert is not None and ssl_context is not None:
            raise ValueError("give cacert or ssl_context, not both")
        self.ssl_context = client_context(cacert) if cacert is not None else ssl_context
        self.addresses = [
            format_address(host, port) for host, port in parse_address_list(addresses or DEFAULT_ADDRESS)
        ]
        self.timeout_seconds = timeout_seconds
        self._links: dict[str, _Link] = {}
        self._nursery: trio.Nursery | None = None
        self._nursery_manager = None
        self._connect_locks = {address: trio.Lock() for address in self.addresses}

    async def __aenter__(self) -> Client:
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        return self

    async def __aexit__(self, exc_type, exc, traceback) -> bool | None:
        # Shielded: leaving the block because of a cancellation must still
        # close the links and exit the nursery.
        with trio.CancelScope(shield=True):
            for link in self._links.values():
                await link.aclose()
        self._nursery.cancel_scope.cancel()
        try:
            return await self._nursery_manager.__aexit__(exc_type, exc, traceback)
        except BaseExceptionGroup as group:
            # The links' tasks never raise, so a group here only wraps what the
            # caller's block raised: give the caller its own exception back.
            matched, rest = group.split(lambda error: error is exc)
            if exc is not None and matched is not None and rest is None:
                raise exc from None
            raise

    # -- Key-Value -------------------------------------------------------------

    async def get(
        self, key: bytes, *, stale: bool = False, timeout: float | None = None
    ) -> Item | None:
        """The value and version of `key`, or None if it holds no value.

        Linearizable by default. `stale=True` answers from the serving node's
        own state without asking a quorum: faster, possibly behind.
        """
        body = {"key": key, "stale": True} if stale else {"key": key}
        try:
            result = await self.call("get", key, body, timeout)
        except KvError as error:
            if error.code == "not_found":
                return None
            raise
        return Item(result["value"], result["version"])

    async def put(
        self,
        key: bytes,
        value: bytes,
        *,
        expected_version: int | None = None,
        expected_value: bytes | None = _UNSET,
        timeout: float | None = None,
    ) -> int:
        """Store `value`; returns the new version. Conditions raise ConditionFailed."""
        body = {"key": key, "value": value}
        _add_condition(body, expected_version, expected_value)
        return (await self.call("put", key, body, timeout))["version"]

    async def cas(
        self, key: bytes, value: bytes, *, expected_version: int, timeout: float | None = None
    ) -> int:
        """Put only if the key is at `expected_version` (0: never written)."""
        return await self.put(key, value, expected_version=expected_version, timeout=timeout)

    async def delete(
        self, key: bytes, *, expected_version: int | None = None, timeout: float | None = None
    ) -> int:
        """Delete `key` (a tombstone at a new version); returns that version."""
        body: dict = {"key": key}
        _add_condition(body, expected_version, _UNSET)
        return (await self.call("delete", key, body, timeout))["version"]

    async def scan_page(
        self,
        *,
        prefix: bytes | None = None,
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int | None = None,
        resume: bytes | None = None,
        timeout: float | None = None,
    ) -> Page:
        body = _without_none(prefix=prefix, start=start, end=end, limit=limit, resume=resume)
        result = await self.call("scan", None, body, timeout)
        return Page([ScanItem(*item) for item in result["items"]], result["resume"])

    async def scan(self, **range_options) -> AsyncIterator[ScanItem]:
        """Every live key in a range (`prefix=` or `start=`/`end=`), page by page."""
        resume = None
        while True:
            page = await self.scan_page(resume=resume, **range_options)
            for item in page.items:
                yield item
            if page.resume is None:
                return
            resume = page.resume

    # -- Key-Table -------------------------------------------------------------

    async def table_write(
        self,
        key: bytes,
        puts: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]] = (),
        deletes: Iterable[bytes] = (),
        *,
        expected_version: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Put and delete rows in one new version of the table; returns it."""
        pairs = puts.items() if isinstance(puts, Mapping) else puts
        body = {"key": key, "puts": [[row, value] for row, value in pairs], "deletes": list(deletes)}
        _add_condition(body, expected_version, _UNSET)
        return (await self.call("table_write", key, body, timeout))["version"]

    async def append(self, key: bytes, value: bytes, *, timeout: float | None = None) -> int:
        """Append a row; its id is the returned version (8 bytes, big-endian)."""
        return (await self.call("append", key, {"key": key, "value": value}, timeout))["version"]

    async def sync(
        self,
        key: bytes,
        since: int = 0,
        *,
        limit: int | None = None,
        stale: bool = False,
        timeout: float | None = None,
    ) -> SyncResult:
        """Rows changed after version `since`, and the version they bring you to."""
        body = _without_none(key=key, since=since, limit=limit, stale=stale or None)
        result = await self.call("sync", key, body, timeout)
        return SyncResult(result["version"], [Row(*row) for row in result["rows"]], result["more"])

    async def table_get(
        self, key: bytes, row_id: bytes, *, timeout: float | None = None
    ) -> Row | None:
        try:
            result = await self.call("table_get", key, {"key": key, "row_id": row_id}, timeout)
        except KvError as error:
            if error.code == "not_found":
                return None
            raise
        return Row(row_id, result["version"], result["value"])

    async def table_rows(
        self,
        key: bytes,
        *,
        start_row: bytes | None = None,
        limit: int | None = None,
        stale: bool = False,
        timeout: float | None = None,
    ) -> Page:
        body = _without_none(key=key, start_row=start_row, limit=limit, stale=stale or None)
        result = await self.call("table_rows", key, body, timeout)
        return Page([Row(*row) for row in result["rows"]], result["resume"])

    # -- the node ----------------------------------------------------------------

    async def status(self, *, timeout: float | None = None) -> dict:
        return await self.call("status", None, {}, timeout)

    async def ping(self, *, timeout: float | None = None) -> None:
        await self.call("ping", None, {}, timeout)

    async def call(
        self, op: str, key: bytes | None, body: dict, timeout: float | None = None
    ) -> dict:
        """Send one request and return its `ok` map, or raise the node's error."""
        seconds = self.timeout_seconds if timeout is None else timeout
        deadline = trio.current_time() + seconds if math.isfinite(seconds) else math.inf
        link = await self._route(key, deadline)
        body["op"] = op
        answer = await link.request(body, deadline)
        if "error" in answer:
            raise error_from_wire(answer["error"])
        result = answer.get("ok")
        if not isinstance(result, dict):
            raise Timeout(f"{op}: malformed answer from {link.address}; the outcome is unknown")
        return result

    def preferred_address(self, key: bytes | None) -> str:
        """The node that coordinates `key` when it is up: the same for every client
        given the group's addresses in the same order (by node id)."""
        if key is None or len(self.addresses) == 1:
            return self.addresses[0]
        return self.addresses[crc32c.crc32c(key) % len(self.addresses)]

    async def _route(self, key: bytes | None, deadline: float) -> _Link:
        """A link to key's preferred node, or to the next one that answers."""
        if self._nursery is None:
            raise RuntimeError("use the client as `async with Client(...) as client:`")
        preferred = self.addresses.index(self.preferred_address(key))
        candidates = self.addresses[preferred:] + self.addresses[:preferred]
        failures = []
        for address in candidates:
            link = self._links.get(address)
            if link is not None and link.broken is None:
                return link
            try:
                return await self._connect(address, deadline)
            except Unavailable as error:
                failures.append(error.message)
        raise Unavailable("cannot connect: " + "; ".join(failures))

    async def _connect(self, address: str, deadline: float) -> _Link:
        async with self._connect_locks[address]:
            link = self._links.get(address)
            if link is not None and link.broken is None:
                return link
            host, port = parse_address_list(address)[0]
            with trio.move_on_at(min(deadline, trio.current_time() + CONNECT_TIMEOUT_SECONDS)):
                try:
                    stream = await trio.open_tcp_stream(
                        host, port, local_address=self.local_address
                    )
                except OSError as error:
                    raise Unavailable(f"{address}: {error.strerror or error}") from None
                stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # frames go at once
                if self.ssl_context is not None:
                    stream = await connect_tls(stream, self.ssl_context, host, address)
                self._links[address] = _Link(address, stream, self._nursery)
                return self._links[address]
            raise Unavailable(f"{address}: connect timed out")


def _add_condition(body: dict, expected_version: int | None, expected_value: object) -> None:
    if expected_version is not None:
        body["expected_version"] = expected_version
    if expected_value is not _UNSET:
        body["expected_value"] = expected_value


def _without_none(**fields) -> dict:
    return {name: value for name, value in fields.items() if value is not None}


class SyncClient:
    """The client for scripts: the same calls, blocking. Runs trio in a thread.

        with SyncClient("127.0.0.1:7420") as client:
            client.put(b"k", b"v")
    """

    def __init__(self, addresses: str | None = None, **options):
        self._client = Client(addresses, **options)
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._failure: BaseException | None = None

    async def _main(self) -> None:
        try:
            async with self._client:
                self._token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                self._ready.set()
                await self._stop.wait()
        except BaseException as error:  # surfaced to the caller by __enter__
            self._failure = error
            self._ready.set()

    def __enter__(self) -> SyncClient:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc_info) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()

    def __getattr__(self, name: str):
        method = getattr(self._client, name)
        if not callable(method) or name.startswith("_") or name == "scan":
            raise AttributeError(name)

        def blocking(*args, **kwargs):
            return trio.from_thread.run(
                lambda: method(*args, **kwargs), trio_token=self._token
            )

        return blocking

    def scan(self, **range_options) -> list[ScanItem]:
        """Every live key in the range, as a list."""

        async def collect() -> list[ScanItem]:
            return [item async for item in self._client.scan(**range_options)]

        return trio.from_thread.run(collect, trio_token=self._token)


__all__ = [
    "Client",
    "SyncClient",
    "Item",
    "ScanItem",
    "Row",
    "SyncResult",
    "Page",
    "KvError",
    "Timeout",
    "FrameError",
]
