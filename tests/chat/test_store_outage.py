"""When the store stops answering in the middle of concurrent calls.

Fan-out rounds, sync answers and group creation make many store calls at
once, as tasks of a trio nursery, and trio hands what they raise over as an
ExceptionGroup. These tests show such failures still come out as the one
store error the callers handle: a fan-out worker whose inbox writes fail
past its deadline backs off, keeps its instance running, and finishes the
channel once the store answers again; a sync whose reads fail is a
`StoreUnavailable` (503), not an internal error.
"""

from __future__ import annotations

import pytest
import trio

from chat_service import keys
from chat_service.delivery_check import SentMessage, check_deliveries
from chat_service.fanout import Fanout, FanoutLimits
from chat_service.inbox_reader import read_inboxes
from chat_service.service import ChatService, ServiceLimits, Snapshot
from chat_service.store import StoreUnavailable, one_store_error
from kvsvr.client import Client
from kvsvr.protocol.errors import Timeout, Unavailable
from tests.chat.conftest import wait_for

MEMBERS = ["ann", "bo", "cy"]
GROUP = "outage"
CHANNEL = keys.group_channel(GROUP)
SHORT_DEADLINES = FanoutLimits(step_deadline_seconds=0.3, sweep_seconds=60)


class Refuses:
    """A client that answers `unavailable` to one kind of call while `refusing`."""

    def __init__(self, client: Client, method: str, key_prefix: bytes):
        self.client = client
        self.method = method
        self.key_prefix = key_prefix
        self.refusing = True
        self.refused = 0

    def __getattr__(self, name):
        call = getattr(self.client, name)
        if name != self.method:
            return call

        async def maybe_refuse(key, *args, **options):
            if self.refusing and key.startswith(self.key_prefix):
                self.refused += 1
                raise Unavailable("refused by the test")
            return await call(key, *args, **options)

        return maybe_refuse


async def nothing_to_notify(changed):
    return None


async def two_messages_logged(client: Client) -> list[SentMessage]:
    joined = keys.encode_json({"joined_seq": 0})
    await client.table_write(keys.members_key(GROUP), {m.encode(): joined for m in MEMBERS})
    appender = Fanout(client, "sender", nothing_to_notify)
    sent = []
    for message_id in ("first", "second"):
        await appender.append(CHANNEL, message_id, deadline=trio.current_time() + 10)
        sent.append(SentMessage(message_id, CHANNEL, frozenset(MEMBERS)))
    return sent


async def test_a_worker_outlives_failed_inbox_writes_and_finishes_afterwards(node_process):
    async with Client(node_process.address, timeout_seconds=5) as client:
        sent = await two_messages_logged(client)
        refusing = Refuses(client, "table_write", b"chat/inbox/")
        worker = Fanout(refusing, "worker", nothing_to_notify, SHORT_DEADLINES)
        # Three members' deliveries fail at once: one StoreUnavailable comes out.
        with pytest.raises(StoreUnavailable):
            await worker.drain(CHANNEL)

        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            worker.kick(CHANNEL, len(sent))
            failed_before = refusing.refused
            await wait_for(lambda: _above(refusing, failed_before + 30),
                           "the worker never retried its failed round")
            refusing.refusing = False

            async def delivered():
                report = check_deliveries(sent, await read_inboxes(client, MEMBERS))
                return report if report.ok else None

            report = await wait_for(delivered, "the channel was never drained after the outage")
            nursery.cancel_scope.cancel()
    assert report.delivered == len(sent) * len(MEMBERS)


async def _above(refusing: Refuses, count: int) -> bool:
    return refusing.refused > count


async def test_a_sync_whose_reads_fail_is_store_unavailable(node_process):
    async with Client(node_process.address, timeout_seconds=5) as client:
        await ChatService(client, instance_id="setup").create_account("dee", "", {})
        refusing = Refuses(client, "sync", b"chat/")
        service = ChatService(refusing, instance_id="one",
                              limits=ServiceLimits(request_deadline_seconds=0.3))
        with pytest.raises(StoreUnavailable):
            await service.sync("dee", Snapshot())
        assert refusing.refused >= 3  # contacts, groups and inbox, at once


def test_a_group_of_store_errors_becomes_the_most_telling_one():
    unknown = StoreUnavailable("timed out", outcome_unknown=True)
    with pytest.raises(StoreUnavailable) as raised, one_store_error():
        raise ExceptionGroup("tasks", [Unavailable("down"),
                                       ExceptionGroup("inner", [unknown, Timeout("slow")])])
    assert raised.value is unknown
    with pytest.raises(Unavailable), one_store_error():
        raise ExceptionGroup("tasks", [Unavailable("down"), Timeout("slow")])


def test_a_group_holding_anything_else_is_left_alone():
    with pytest.raises(ExceptionGroup), one_store_error():
        raise ExceptionGroup("tasks", [Unavailable("down"), AssertionError("broken invariant")])
