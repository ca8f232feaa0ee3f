"""Sync and retention, in process against one real node: the snapshot moves
forward with what was returned, and confirmed entries far enough behind are
trimmed while everything newer stays."""

from __future__ import annotations

import trio

from chat_service import keys
from chat_service.inbox_reader import read_inbox
from chat_service.service import ChatService, ServiceLimits, Snapshot
from kvsvr.client import Client

LIMITS = ServiceLimits(inbox_retained_versions=10, trim_batch_versions=5, sync_inbox_rows_max=8)


async def send_and_drain(service: ChatService, sender: str, recipient: str, count: int) -> None:
    """One inbox version per message (a drain after each send)."""
    for index in range(count):
        answer = await service.send_direct(sender, recipient, f"text {index}", f"m{index:03d}")
        await service.fanout.drain(answer["channel"])


async def test_sync_pages_through_the_inbox_and_the_snapshot_confirms_and_trims(node_process):
    async with Client(node_process.address, timeout_seconds=5) as store:
        service = ChatService(store, instance_id="one", limits=LIMITS)
        await service.create_account("ann", "Ann", {})
        await service.create_account("bo", "Bo", {})
        await send_and_drain(service, "ann", "bo", 30)

        # Paging: at most sync_inbox_rows_max rows an answer, `more` until the end,
        # every message once, in order.
        snapshot, received, answers = Snapshot(), [], 0
        while True:
            answer = await service.sync("bo", snapshot)
            answers += 1
            received += [message["text"] for message in answer["messages"]]
            snapshot = Snapshot(**answer["snapshot"])
            if not answer["more"]:
                break
        assert received == [f"text {index}" for index in range(30)]
        assert answers >= 30 // LIMITS.sync_inbox_rows_max

        # The last sync confirmed everything; the next one trims what is more than
        # inbox_retained_versions behind.
        await service.sync("bo", snapshot)
        left = await read_inbox(store, "bo")
        assert 0 < len(left) < 30
        assert [entry.message_id for entry in left] == [
            f"m{index:03d}" for index in range(30 - len(left), 30)]

        # A device that was further behind is told what it can no longer fetch.
        stale = await service.sync("bo", Snapshot())
        assert stale["inbox_trimmed_through"] > 0
        # So is one syncing through an instance that never trimmed this inbox.
        other = ChatService(store, instance_id="two", limits=LIMITS)
        elsewhere = await other.sync("bo", Snapshot())
        assert elsewhere["inbox_trimmed_through"] == stale["inbox_trimmed_through"]
        # Trimming never lets a retried delivery back in: markers stay.
        channel = keys.direct_channel("ann", "bo")
        assert await service.fanout.deliver("bo", channel, [
            keys.InboxEntry("m000", channel, 1)]) is None


async def test_a_waiting_sync_returns_on_a_change_made_on_the_same_instance(node_process):
    async with Client(node_process.address, timeout_seconds=5) as store:
        service = ChatService(store, instance_id="one", limits=LIMITS)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await service.create_account("cy", "", {})
            await service.create_account("di", "", {})
            first = await service.sync("di", Snapshot())
            answer = {}

            async def wait():
                answer.update(await service.sync(
                    "di", Snapshot(**first["snapshot"]), wait_seconds=20))

            nursery.start_soon(wait)
            with trio.fail_after(10):
                while service.notifier.current_statistics()["watches"] == 0:
                    await trio.sleep(0.01)
            started = trio.current_time()
            await service.send_direct("cy", "di", "psst", "psst-1")
            with trio.fail_after(10):
                while not answer:
                    await trio.sleep(0.01)
            assert [message["text"] for message in answer["messages"]] == ["psst"]
            assert trio.current_time() - started < 1.0
            nursery.cancel_scope.cancel()
