"""Exactly-once fan-out when the store's answers are lost.

The worst a store can do to a fan-out worker is apply a write and lose the
answer: the worker sees `Timeout` and can't tell it from a write that never
happened. These tests wrap a real node's client so that a share of writes
land and then time out, run the fan-out against it (also two workers on
one channel at once, as after a lease expiry), and read every inbox back.
They also plant the bug the design avoids (a worker that retries inbox
appends blindly) and show the delivery checker catches it.
"""

from __future__ import annotations

import random

import pytest
import trio

from chat_service import keys
from chat_service.delivery_check import SentMessage, check_deliveries
from chat_service.fanout import Fanout
from chat_service.inbox_reader import read_inboxes
from kvsvr.client import Client
from kvsvr.protocol.errors import Timeout

MEMBERS = [f"member{index:02d}" for index in range(12)]
GROUP = "crowd"
CHANNEL = keys.group_channel(GROUP)
MESSAGES = 40


class LosesAnswers:
    """A client whose writes land but whose answers are lost, with `probability`."""

    def __init__(self, client: Client, seed: int, probability: float = 0.3):
        self.client = client
        self.rng = random.Random(seed)
        self.probability = probability
        self.lost = 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    async def _maybe_lose(self, result):
        if self.rng.random() < self.probability:
            self.lost += 1
            raise Timeout("the write landed, but its answer was lost")
        return result

    async def append(self, *args, **options):
        return await self._maybe_lose(await self.client.append(*args, **options))

    async def table_write(self, *args, **options):
        return await self._maybe_lose(await self.client.table_write(*args, **options))

    async def put(self, *args, **options):
        return await self._maybe_lose(await self.client.put(*args, **options))


class BlindRetryFanout(Fanout):
    """The planted bug: deliver by appending each entry, retrying a timeout blindly."""

    async def deliver(self, user, channel, entries):
        version = None
        for entry in entries:
            while True:
                try:
                    version = await self.store.table_write(
                        keys.inbox_key(user), {keys.entry_row_id(channel, entry.seq) + b"+%d" % (
                            random.getrandbits(32)): keys.encode_entry(entry)})
                    break
                except Timeout:
                    continue
        return version


async def nothing_to_notify(changed):
    return None


async def prepare(client: Client, lossy) -> list[SentMessage]:
    joined = keys.encode_json({"joined_seq": 0})
    await client.table_write(keys.members_key(GROUP), {m.encode(): joined for m in MEMBERS})
    appender = Fanout(lossy, "sender", nothing_to_notify)
    sent = []
    for index in range(MESSAGES):
        message_id = f"message{index:03d}"
        await appender.append(CHANNEL, message_id, deadline=trio.current_time() + 30)
        sent.append(SentMessage(message_id, CHANNEL, frozenset(MEMBERS)))
    return sent


async def test_lost_answers_never_duplicate_or_drop_an_entry(node_process):
    """Appends, placements and inbox writes that land and time out: each message
    is still delivered once per member, in one order; the log really did get
    duplicate entries, and they were skipped."""
    async with Client(node_process.address, timeout_seconds=5) as client:
        lossy = LosesAnswers(client, seed=1)
        sent = await prepare(client, lossy)
        log_rows = (await client.sync(keys.fanout_key(CHANNEL, "log"))).rows
        assert len(log_rows) > MESSAGES, "no append was lost and retried: the test shows nothing"
        worker = Fanout(lossy, "worker", nothing_to_notify)
        await worker.drain(CHANNEL)
        report = check_deliveries(sent, await read_inboxes(client, MEMBERS))
    assert report.ok, report.describe()
    assert worker.statistics["duplicate_log_entries"] == len(log_rows) - MESSAGES
    assert lossy.lost > 10


async def test_two_workers_draining_one_channel_at_once_deliver_once(node_process):
    """What a lease expiry can cause: two workers on the same channel, both losing
    answers. The inbox markers and conditional writes keep each entry single."""
    async with Client(node_process.address, timeout_seconds=5) as client:
        sent = await prepare(client, LosesAnswers(client, seed=2))
        workers = [Fanout(LosesAnswers(client, seed=10 + index), f"w{index}", nothing_to_notify)
                   for index in range(2)]
        async with trio.open_nursery() as nursery:
            for worker in workers:
                nursery.start_soon(worker.drain, CHANNEL)
        report = check_deliveries(sent, await read_inboxes(client, MEMBERS))
    assert report.ok, report.describe()
    assert sum(worker.statistics["inbox_conflicts"] for worker in workers) > 0


@pytest.mark.parametrize("planted", ["blind inbox retries", "no placement check"])
async def test_the_checker_catches_a_planted_duplicate(node_process, planted):
    """The checks can fail: a worker that retries inbox writes blindly, or one that
    delivers every log entry without the placement check, makes duplicates, and
    the delivery checker reports them."""
    async with Client(node_process.address, timeout_seconds=5) as client:
        sent = await prepare(client, LosesAnswers(client, seed=3))
        lossy = LosesAnswers(client, seed=4)
        if planted == "blind inbox retries":
            worker = BlindRetryFanout(lossy, "buggy", nothing_to_notify)
        else:
            worker = Fanout(lossy, "buggy", nothing_to_notify)

            async def every_entry(channel, logged):
                return [keys.InboxEntry(message_id, channel, seq) for seq, message_id in logged]

            worker._canonical_entries = every_entry
        await worker.drain(CHANNEL)
        report = check_deliveries(sent, await read_inboxes(client, MEMBERS))
    assert report.duplicates, f"the planted bug went unnoticed: {report.describe()}"
    assert not report.ok
