"""chat-bench: simulated users and groups sending and syncing through chat_service.

    chat-bench --chat URL[,URL...] --users N --groups G --group-size S --messages M [--rate R]

Theory of operation. The bench creates N users (names carry a random run
id, so runs against one store never collide) and G groups of S members
drawn from them (seeded), spreading users over the given instances. Every
user that belongs to a group keeps one long-poll sync open through its
instance and records when each message first reaches it. Senders send M
group messages, each from a random member of a random group, at R messages
a second (an open loop: a send starts on schedule whether or not earlier
ones were answered) or, without `--rate`, as fast as `--concurrency` sends
in flight allow (a closed loop), retrying a failed send with the same
message id. A send is *accepted* when it is answered 202.

Figures:
- delivery latency: from a send's acceptance to the moment a recipient's
  sync answer carries it, over every (message, recipient) pair, sender
  included; p50 and p99;
- msgs_per_s: accepted messages divided by the time from the first send to
  the last delivery (so it counts fan-out, not just acceptance);
- missing and duplicates: after every send is answered, the bench waits for
  the expected deliveries (up to `--drain-seconds`), stops the long-polls,
  syncs every user once more through the *other* instance (paging until
  the answer has no `more`), and runs the delivery checker
  (delivery_check.py) on everything each user received over the run:
  `missing` counts acknowledged (message, recipient) pairs never received,
  `duplicates` the extra copies of any message received more than once.
  `delivered + missing == expected_deliveries` (the acknowledged messages
  times their recipients) and `sent + unknown_sends == messages`.

Latencies are taken in the bench process: when it is short of CPU (it runs
every simulated user in one trio loop), its own scheduling delay is part of
what it reports.

The run is bounded: M messages, then the drain deadline, then it stops.
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import sys
import time
import uuid

import click
import trio

from chat_service import keys
from chat_service.delivery_check import Delivered, SentMessage, check_deliveries
from chat_service.http_client import ChatClient, ChatError

SETUP_IN_FLIGHT_MAX = 32
# Simulated users sharing one HTTP connection pool.
RECEIVERS_PER_POOL = 8
# The final sync of one user, through pages and retries, must end by then.
FINAL_SYNC_DEADLINE_SECONDS = 60.0
RETRY_PAUSE_SECONDS = 0.1
# Sends in flight at most: as fast as this allows without --rate; with
# --rate, a cap high enough that a slow service delays sends (reported as
# `schedule_lag_max_ms`) only once this many are waiting for answers.
CLOSED_LOOP_CONCURRENCY = 16
OPEN_LOOP_CONCURRENCY = 1000


@dataclasses.dataclass
class Receiver:
    user: str
    instance: int
    snapshot: dict = dataclasses.field(default_factory=dict)
    received: list[Delivered] = dataclasses.field(default_factory=list)
    first_seen: dict[str, float] = dataclasses.field(default_factory=dict)
    errors: int = 0

    def take(self, answer: dict, now: float) -> None:
        self.snapshot = answer["snapshot"]
        for message in answer["messages"]:
            self.received.append(Delivered(message["message_id"], message["channel"]))
            self.first_seen.setdefault(message["message_id"], now)


@dataclasses.dataclass
class Plan:
    users: list[str]
    groups: dict[str, list[str]]
    sends: list[tuple[str, str, str]]  # (group, sender, message id)


def make_plan(run: str, users: int, groups: int, group_size: int, messages: int,
              seed: int) -> Plan:
    rng = random.Random(seed)
    names = [f"b{run}-u{index:05d}" for index in range(users)]
    size = min(group_size, users)
    group_members = {f"b{run}-g{index:04d}": sorted(rng.sample(names, size))
                     for index in range(groups)}
    group_names = sorted(group_members)
    sends = []
    for index in range(messages):
        group = rng.choice(group_names)
        sends.append((group, rng.choice(group_members[group]), f"b{run}-m{index:06d}"))
    return Plan(names, group_members, sends)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


async def bounded_all(calls, limit: int) -> None:
    limiter = trio.Semaphore(limit)

    async def one(call):
        async with limiter:
            await call()

    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(one, call)


async def sync_fully(chat: ChatClient, receiver: Receiver, instance: int,
                     deadline_seconds: float) -> bool:
    """Sync `receiver` until an answer has no `more`, retrying failed calls;
    False if that did not happen within `deadline_seconds`."""
    with trio.move_on_after(deadline_seconds):
        while True:
            try:
                answer = await chat.sync(receiver.user, receiver.snapshot, instance=instance)
            except Exception:  # noqa: BLE001 (an instance or the network failed: try again)
                receiver.errors += 1
                await trio.sleep(RETRY_PAUSE_SECONDS)
                continue
            receiver.take(answer, time.monotonic())
            if not answer["more"]:
                return True
    return False


async def run_bench(urls: list[str], *, users: int, groups: int, group_size: int,
                    messages: int, rate: float | None, concurrency: int, seed: int,
                    wait_seconds: float, drain_seconds: float, out=sys.stdout) -> dict:
    run = uuid.uuid4().hex[:6]
    plan = make_plan(run, users, groups, group_size, messages, seed)
    members = sorted({user for group in plan.groups.values() for user in group})
    say = lambda text: print(text, file=out, flush=True)  # noqa: E731
    say(f"chat-bench run {run}: {users} users, {groups} groups of {group_size}, "
        f"{messages} messages, rate {rate or 'max'}, {len(urls)} instance(s)")

    receivers = {user: Receiver(user, index) for index, user in enumerate(members)}
    async with contextlib.AsyncExitStack() as stack:
        # Small pools: httpx's pool does work proportional to its connections
        # on every request, so one pool for hundreds of long-polls would make
        # the bench, not the service, the bottleneck.
        chat = await stack.enter_async_context(
            ChatClient(urls, connections_max=concurrency + SETUP_IN_FLIGHT_MAX))
        pools = [await stack.enter_async_context(
                     ChatClient(urls, connections_max=RECEIVERS_PER_POOL))
                 for _ in range(math.ceil(len(receivers) / RECEIVERS_PER_POOL))]
        pool_of = {user: pools[index // RECEIVERS_PER_POOL]
                   for index, user in enumerate(receivers)}
        started = time.monotonic()
        await bounded_all([lambda u=user, i=index: chat.create_account(u, instance=i)
                           for index, user in enumerate(plan.users)], SETUP_IN_FLIGHT_MAX)
        for index, (group, group_members) in enumerate(plan.groups.items()):
            await chat.create_group(group, group_members[0], group_members, instance=index)

        async def start_from_now(receiver: Receiver) -> None:
            # Group creation changed the user's groups list; start past that.
            if not await sync_fully(pool_of[receiver.user], receiver, receiver.instance,
                                    FINAL_SYNC_DEADLINE_SECONDS):
                raise RuntimeError(f"the first sync of {receiver.user} never completed")
            receiver.received.clear()
            receiver.first_seen.clear()

        await bounded_all([lambda r=receiver: start_from_now(r)
                           for receiver in receivers.values()], SETUP_IN_FLIGHT_MAX)
        say(f"setup: {time.monotonic() - started:.1f} s")

        accepted: dict[str, float] = {}
        acknowledged: list[SentMessage] = []
        unknown: list[SentMessage] = []
        send_latencies: list[float] = []
        expected = {"deliveries": 0}
        schedule_lag = {"max": 0.0}

        async def receive(receiver: Receiver) -> None:
            while True:
                try:
                    answer = await pool_of[receiver.user].sync(
                        receiver.user, receiver.snapshot, wait_seconds=wait_seconds,
                        instance=receiver.instance)
                except Exception:  # noqa: BLE001 (an instance or the network failed: go on)
                    receiver.errors += 1
                    await trio.sleep(RETRY_PAUSE_SECONDS)
                    continue
                receiver.take(answer, time.monotonic())

        async def send(index: int, group: str, sender: str, message_id: str) -> None:
            began = time.monotonic()
            message = SentMessage(message_id, keys.group_channel(group),
                                  frozenset(plan.groups[group]))
            try:
                outcome = await chat.send_group(sender, group, f"bench message {index}",
                                                message_id, instance=index)
            except ChatError:
                unknown.append(message)
                return
            if outcome.acknowledged:
                accepted[message_id] = time.monotonic()
                send_latencies.append(accepted[message_id] - began)
                acknowledged.append(message)
                expected["deliveries"] += len(message.recipients)
            else:
                unknown.append(message)

        def all_arrived() -> bool:
            # The cheap count first: it includes deliveries of unknown sends, so
            # it can only be too high, and the exact count settles it.
            if sum(len(r.first_seen) for r in receivers.values()) < expected["deliveries"]:
                return False
            arrived = sum(1 for receiver in receivers.values()
                          for message_id in receiver.first_seen if message_id in accepted)
            return arrived >= expected["deliveries"]

        first_send = time.monotonic()
        async with trio.open_nursery() as nursery:
            for receiver in receivers.values():
                nursery.start_soon(receive, receiver)
            limiter = trio.Semaphore(concurrency)

            async def send_and_release(index, group, sender, message_id):
                try:
                    await send(index, group, sender, message_id)
                finally:
                    limiter.release()

            pace_start = trio.current_time()
            async with trio.open_nursery() as senders:
                for index, (group, sender, message_id) in enumerate(plan.sends):
                    if rate:
                        await trio.sleep_until(pace_start + index / rate)
                    await limiter.acquire()  # at most `concurrency` sends in flight
                    if rate:  # how far the open loop fell behind its schedule
                        lag = trio.current_time() - (pace_start + index / rate)
                        schedule_lag["max"] = max(schedule_lag["max"], lag)
                    senders.start_soon(send_and_release, index, group, sender, message_id)
            send_seconds = time.monotonic() - first_send
            say(f"sent: {len(acknowledged)} accepted, {len(unknown)} unknown, "
                f"in {send_seconds:.1f} s")
            with trio.move_on_after(drain_seconds):
                while not all_arrived():
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()  # stop the long-polls

        # The final sync of every user, through the other instance.
        incomplete = []

        async def final_sync(receiver: Receiver) -> None:
            if not await sync_fully(pool_of[receiver.user], receiver, receiver.instance + 1,
                                    FINAL_SYNC_DEADLINE_SECONDS):
                incomplete.append(receiver.user)

        await bounded_all([lambda r=receiver: final_sync(r) for receiver in receivers.values()],
                          SETUP_IN_FLIGHT_MAX)

    figures = summarize(acknowledged, unknown, list(receivers.values()), accepted,
                        send_latencies, first_send=first_send, send_seconds=send_seconds,
                        say=say)
    figures.update({
        "final_sync_incomplete": len(incomplete),
        "schedule_lag_max_ms": round(schedule_lag["max"] * 1000, 1) if rate else None,
        "users": users, "groups": groups, "group_size": group_size, "messages": messages,
        "rate": rate, "concurrency": concurrency, "instances": len(urls),
    })
    say(f"delivery latency p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms; "
        f"{figures['msgs_per_s']} msgs/s, {figures['deliveries_per_s']} deliveries/s; "
        f"missing {figures['missing']}, duplicates {figures['duplicates']}")
    say(json.dumps(figures))
    return figures


def summarize(acknowledged: list[SentMessage], unknown: list[SentMessage],
              receivers: list[Receiver], accepted: dict[str, float],
              send_latencies: list[float], *, first_send: float, send_seconds: float,
              say=print) -> dict:
    """The figures of a run from what the bench saw: the delivery check on
    everything each user received, latencies and rates. Pure but for `say`."""
    report = check_deliveries(acknowledged, {r.user: r.received for r in receivers},
                              attempted=unknown)
    if not report.ok:
        say(f"delivery check: {report.describe()}")
    by_user = {receiver.user: receiver for receiver in receivers}
    latencies = [
        max(0.0, by_user[user].first_seen[message.message_id] - accepted[message.message_id])
        for message in acknowledged for user in message.recipients
        if user in by_user and message.message_id in by_user[user].first_seen
    ]
    last_delivery = max((receiver.first_seen[m] for receiver in receivers
                         for m in receiver.first_seen if m in accepted), default=first_send)
    duration = max(last_delivery - first_send, 1e-9)
    return {
        "sent": len(acknowledged),
        "expected_deliveries": report.expected_deliveries,
        "delivered": report.delivered,
        "missing": len(report.missing),
        "duplicates": report.duplicate_count,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "msgs_per_s": round(len(acknowledged) / duration, 2),
        "deliveries_per_s": round(len(latencies) / duration, 1),
        "send_seconds": round(send_seconds, 1),
        "duration_s": round(duration, 1),
        "send_p50_ms": round(percentile(send_latencies, 0.50) * 1000, 1),
        "send_p99_ms": round(percentile(send_latencies, 0.99) * 1000, 1),
        "unknown_sends": len(unknown),
        "order_violations": len(report.order_violations),
        "unexpected": len(report.unexpected),
        "sync_errors": sum(receiver.errors for receiver in receivers),
    }


@click.command()
@click.option("--chat", "chat_urls", required=True, help="chat_service URLs, comma-separated")
@click.option("--users", type=click.IntRange(1, 100_000), required=True)
@click.option("--groups", type=click.IntRange(1, 10_000), required=True)
@click.option("--group-size", type=click.IntRange(1, 500), required=True)
@click.option("--messages", type=click.IntRange(1, 1_000_000), required=True)
@click.option("--rate", type=click.FloatRange(min=0.01), default=None,
              help="messages a second (default: as fast as --concurrency allows)")
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=None,
              help=f"sends in flight at most [default: {CLOSED_LOOP_CONCURRENCY}; with --rate "
                   f"{OPEN_LOOP_CONCURRENCY}, so the schedule is kept unless sends pile up]")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--wait-seconds", type=click.FloatRange(0.1, 60), default=10.0, show_default=True,
              help="long-poll wait of each user's sync")
@click.option("--drain-seconds", type=click.FloatRange(1, 3600), default=120.0,
              show_default=True, help="how long to wait for deliveries after the last send")
def main(chat_urls, users, groups, group_size, messages, rate, concurrency, seed,
         wait_seconds, drain_seconds) -> None:
    """Simulate users and groups sending and syncing; report latency, throughput,
    missing and duplicate deliveries (the last line is JSON)."""
    urls = [url.strip() for url in chat_urls.split(",") if url.strip()]
    if concurrency is None:
        concurrency = OPEN_LOOP_CONCURRENCY if rate else CLOSED_LOOP_CONCURRENCY
    figures = trio.run(lambda: run_bench(
        urls, users=users, groups=groups, group_size=group_size, messages=messages, rate=rate,
        concurrency=concurrency, seed=seed, wait_seconds=wait_seconds,
        drain_seconds=drain_seconds))
    sys.exit(0 if figures["missing"] == 0 and figures["duplicates"] == 0 else 1)


if __name__ == "__main__":
    main()
