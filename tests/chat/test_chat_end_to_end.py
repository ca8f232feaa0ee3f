"""The chat service end to end: real KVSvr nodes, two chat_service instances,
HTTP clients on either side.

What these show: users on different instances chat one-to-one and in a group
of 200, every member gets every message once and in one order (read from the
store and checked by the delivery checker), a waiting client is woken within
a fraction of a second by a message sent through the other instance, presence
reaches contacts through sync, and bad requests are refused with a 4xx and a
message.
"""

from __future__ import annotations

import time
import uuid

import pytest
import trio

from chat_service import keys
from chat_service.delivery_check import SentMessage, check_deliveries
from chat_service.http_client import ChatClient, ChatError
from chat_service.inbox_reader import read_inboxes
from kvsvr.client import Client
from tests.chat.conftest import wait_for

A, B = 0, 1  # the two instances


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def sync_until(chat: ChatClient, user: str, instance: int, count: int) -> list[dict]:
    """Sync `user` through `instance` until `count` messages arrived; returns them."""
    messages: list[dict] = []
    snapshot: dict = {}

    async def arrived():
        nonlocal snapshot
        answer = await chat.sync(user, snapshot, instance=instance)
        snapshot = answer["snapshot"]
        messages.extend(answer["messages"])
        return len(messages) >= count

    await wait_for(arrived, f"{user} never got {count} messages (got {len(messages)})")
    return messages


async def test_users_on_different_instances_chat_one_to_one(chat_cluster):
    """alice (instance A) and bob (instance B) exchange messages; each sees both
    messages once, in the same order, in their own inbox."""
    alice, bob = unique("alice"), unique("bob")
    async with ChatClient(chat_cluster.urls) as chat:
        await chat.create_account(alice, "Alice", instance=A)
        await chat.create_account(bob, "Bob", instance=B)
        first = await chat.send_direct(alice, bob, "hello bob", unique("m"), instance=A)
        assert first.acknowledged and first.answer["channel"] == keys.direct_channel(alice, bob)
        bob_sees = await sync_until(chat, bob, B, 1)
        assert [(m["from"], m["text"], m["peer"]) for m in bob_sees] == [
            (alice, "hello bob", alice)]
        second = await chat.send_direct(bob, alice, "hi alice", unique("m"), instance=B)
        alice_sees = await sync_until(chat, alice, A, 2)
        bob_sees = await sync_until(chat, bob, B, 2)
    order = [first.message_id, second.message_id]
    assert [m["message_id"] for m in alice_sees] == order
    assert [m["message_id"] for m in bob_sees] == order


async def test_a_group_of_200_across_instances_gets_every_message_once_in_one_order(
    chat_cluster,
):
    """200 users, half created through each instance; members send through both
    instances; every inbox holds every message exactly once, in the group's order."""
    users = [unique(f"u{index:03d}") for index in range(200)]
    group = unique("big")
    async with ChatClient(chat_cluster.urls) as chat:
        async with trio.open_nursery() as nursery:
            for index, user in enumerate(users):
                nursery.start_soon(lambda u=user, i=index: chat.create_account(u, instance=i))
        await chat.create_group(group, users[0], users, name="Two hundred", instance=A)
        sent = []
        for index in range(6):
            outcome = await chat.send_group(users[index * 7], group, f"message {index}",
                                            unique("m"), instance=index)
            assert outcome.acknowledged
            sent.append(SentMessage(outcome.message_id, keys.group_channel(group),
                                    frozenset(users)))

        async with Client(chat_cluster.group.addresses) as store:
            async def all_delivered():
                report = check_deliveries(sent, await read_inboxes(store, users))
                return report if not report.missing else None

            report = await wait_for(all_delivered, "the fan-out to 200 members never completed")
        assert report.ok, report.describe()
        assert report.delivered == 6 * 200

        # Members see the same order through sync, on either instance.
        seen_a = await sync_until(chat, users[50], A, 6)
        seen_b = await sync_until(chat, users[150], B, 6)
    assert [m["message_id"] for m in seen_a] == [m["message_id"] for m in seen_b]
    assert [m["text"] for m in seen_a] == [f"message {index}" for index in range(6)]


async def test_a_waiting_client_is_woken_by_a_message_sent_through_the_other_instance(
    chat_cluster,
):
    """carol long-polls on instance B; dave sends through instance A; carol's wait
    ends with the message within a fraction of a second of the send's answer."""
    carol, dave = unique("carol"), unique("dave")
    async with ChatClient(chat_cluster.urls) as chat:
        await chat.create_account(carol, instance=B)
        await chat.create_account(dave, instance=A)
        snapshot = (await chat.sync(carol, instance=B))["snapshot"]
        delays = []
        for round_number in range(3):
            woken: dict = {}

            async def wait(snapshot=snapshot, woken=woken):
                woken["answer"] = await chat.sync(carol, snapshot, wait_seconds=20, instance=B)
                woken["at"] = time.monotonic()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                await wait_for(lambda: watching(chat, B), "the wait was never parked on B")
                assert "answer" not in woken, "the wait ended before anything was sent"
                outcome = await chat.send_direct(dave, carol, f"wake {round_number}",
                                                 unique("m"), instance=A)
                sent_at = time.monotonic()
            assert [m["message_id"] for m in woken["answer"]["messages"]] == [outcome.message_id]
            delays.append(woken["at"] - sent_at)
            snapshot = woken["answer"]["snapshot"]
    assert max(delays) < 1.0, f"woken {delays} s after the send was acknowledged"


async def watching(chat: ChatClient, instance: int) -> bool:
    health = await chat.request("GET", "/health", instance=instance)
    return health["statistics"]["notify"]["watches"] > 0


async def test_presence_reaches_contacts_through_sync_and_heartbeats_are_coalesced(
    chat_cluster,
):
    erin, finn = unique("erin"), unique("finn")
    async with ChatClient(chat_cluster.urls) as chat:
        await chat.create_account(erin, instance=A)
        await chat.create_account(finn, instance=B)
        await chat.add_contact(finn, erin, instance=B)
        first = await chat.presence(erin, "online", instance=A)
        again = await chat.presence(erin, "online", instance=B)
        assert (first["written"], again["written"]) == (True, False)
        answer = await chat.sync(finn, instance=B)
        assert answer["presence"][erin]["online"] is True
        assert [contact["user"] for contact in answer["contacts"]] == [erin]
        before_offline = answer["snapshot"]["presence"]
        await chat.presence(erin, "offline", instance=A)
        # A snapshot's presence time says "what changed since then" (refreshed at
        # most every few seconds): ask from a time far enough back.
        snapshot = dict(answer["snapshot"], presence=before_offline - 10)

        async def offline_seen():
            presence = (await chat.sync(finn, snapshot, instance=A))["presence"]
            return erin in presence and presence[erin]["online"] is False

        await wait_for(offline_seen, "finn never saw erin go offline")


async def test_bad_requests_are_refused_with_a_4xx_and_a_message(chat_cluster):
    gail, hank, stranger = unique("gail"), unique("hank"), unique("stranger")
    group = unique("g")
    async with ChatClient(chat_cluster.urls) as chat:
        await chat.create_account(gail)
        await chat.create_account(hank)
        await chat.create_account(stranger)
        await chat.create_group(group, gail, [hank])
        cases = [
            (chat.create_account("not/valid"), 400),
            (chat.request("POST", "/sync", json={"user": gail, "snapshot": {"inbox": -1}}), 400),
            (chat.request("POST", "/messages", json={"from": gail, "to": hank}), 400),
            (chat.request("POST", "/accounts", json={"user": gail, "bogus": 1}), 400),
            (chat.create_account(gail, "Someone else"), 409),
            (chat.sync(unique("nobody")), 404),
            (chat.send_group(gail, unique("nogroup"), "x", unique("m")), 404),
            (chat.send_direct(gail, unique("nobody"), "x", unique("m")), 404),
            (chat.send_group(stranger, group, "let me in", unique("m")), 403),
            (chat.send_group(gail, group, "x" * 20_000, unique("m")), 400),
        ]
        for call, status in cases:
            with pytest.raises(ChatError) as refused:
                await call
            assert refused.value.status == status, refused.value
            assert refused.value.message

        # A message id is an idempotency key: the same send twice is one message,
        # a different message under a used id is a conflict.
        message_id = unique("m")
        for _ in range(2):
            assert (await chat.send_group(gail, group, "once", message_id)).acknowledged
        with pytest.raises(ChatError) as conflict:
            await chat.send_group(gail, group, "something else", message_id)
        assert conflict.value.status == 409
        # Entries are delivered in log order: once a later message is in, the
        # second send's log entry has been dealt with too.
        barrier = await chat.send_group(gail, group, "after", unique("m"))
        messages = await sync_until(chat, hank, A, 2)
    assert [m["message_id"] for m in messages] == [message_id, barrier.message_id]
