"""Bytes waiting to go out on one stream, and the one loop that sends them.

Theory. Whoever has something to send (a request, an answer) appends its
frame here without awaiting; one task per stream sends everything waiting
in one `send_all` as soon as the stream is free. So nothing waits to fill
a batch when the stream is idle, and frames that pile up while a send runs
leave together in the next one: under load, sends grow by themselves and
cost one system call for many frames. The client library, the frame server
and kvctl's echo baseline all send this way. Peer links queue messages
rather than bytes (they drop past a bound and frame many messages as one
envelope, replica_node.py), so they keep their own loop over that queue.
"""

from __future__ import annotations

import trio


class Outgoing:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._ready = trio.Event()

    def __len__(self) -> int:
        return len(self._buffer)

    def add(self, frame: bytes) -> None:
        self._buffer += frame
        self._ready.set()

    def wake(self) -> None:
        """Wake the sender without adding bytes (it may have something to check)."""
        self._ready.set()

    async def wait(self) -> None:
        """Until there are bytes to send, or someone calls `wake`."""
        if not self._buffer:
            self._ready = trio.Event()
            await self._ready.wait()

    def take(self) -> bytes:
        """Everything waiting, and the buffer empty again."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    async def send_forever(self, stream: trio.abc.Stream) -> None:
        """Send whatever is added, as it comes; raises what the stream raises."""
        while True:
            await self.wait()
            if self._buffer:
                await stream.send_all(self.take())
