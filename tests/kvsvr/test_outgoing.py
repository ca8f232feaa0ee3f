"""The one send loop (kvsvr/shell/outgoing.py): nothing waits when idle, and
what piles up during a send leaves together in the next one."""

from __future__ import annotations

import trio
import trio.testing

from kvsvr.shell.outgoing import Outgoing


class _HeldStream:
    """A stream whose first send waits until released; records every send."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.release = trio.Event()

    async def send_all(self, data: bytes) -> None:
        self.sends.append(data)
        if len(self.sends) == 1:
            await self.release.wait()


async def test_frames_added_during_a_send_leave_together_in_the_next():
    stream, outgoing = _HeldStream(), Outgoing()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outgoing.send_forever, stream)
        outgoing.add(b"first")
        await trio.testing.wait_all_tasks_blocked()
        assert stream.sends == [b"first"]  # sent at once: the stream was idle
        outgoing.add(b"second,")
        outgoing.add(b"third")
        assert len(outgoing) == len(b"second,third")
        stream.release.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert stream.sends == [b"first", b"second,third"]
    assert len(outgoing) == 0


async def test_a_wake_without_bytes_sends_nothing():
    stream, outgoing = _HeldStream(), Outgoing()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outgoing.send_forever, stream)
        await trio.testing.wait_all_tasks_blocked()
        outgoing.wake()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert stream.sends == []
