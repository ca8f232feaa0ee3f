"""Named limits: every queue, frame, batch and value in the node has one.

Each limit says what it bounds and why it is the size it is. The server
reads them from `Limits`, so a deployment (or a test) can tighten or loosen
them in one place; the defaults are safe for a small machine.

Units go last in names: `frame_size_max_bytes`, `batch_ops_max`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Limits:
    # A key is an index entry, not a payload: small keys keep every per-key
    # record (state, acceptor, log) small.
    key_size_max_bytes: int = 1024
    # A value travels in one frame; 1 MiB leaves room for the request around it.
    value_size_max_bytes: int = 1024 * 1024
    # The largest frame either side accepts. A larger length prefix is answered
    # `too_large` and the connection is closed (its stream can't be resynced).
    frame_size_max_bytes: int = 4 * 1024 * 1024
    # Rows written by one Key-Table batch mutation.
    table_batch_rows_max: int = 1000
    # Items one scan, row listing or sync may return; clients page past it.
    scan_items_max: int = 1000
    # Requests one connection may have in flight before the server stops
    # reading from it (TCP backpressure on the client, no memory growth).
    connection_requests_in_flight_max: int = 1024
    # Answers queued on one connection and not yet sent; past it the server
    # stops reading that connection's requests until the client reads, so a
    # client that pipelines reads and never reads the answers costs bounded memory.
    connection_outgoing_max_bytes: int = 4 * 1024 * 1024
    # Open client connections; the next one is answered `overloaded` and closed.
    connections_max: int = 1024
    # Writes waiting for group commit across all connections; past it a write
    # is answered `overloaded` rather than queued without bound.
    commit_queue_ops_max: int = 50_000
    # Bytes read from a socket per receive call.
    receive_size_max_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"limit {field.name} must be a positive integer, not {value!r}")
        if self.value_size_max_bytes + self.key_size_max_bytes + 4096 > self.frame_size_max_bytes:
            raise ValueError("frame_size_max_bytes must leave room for a key, a value and a header")


DEFAULT_LIMITS = Limits()
