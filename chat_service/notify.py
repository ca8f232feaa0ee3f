"""Push: wake a waiting sync when its user's data changes, on any instance.

Theory of operation. A sync call with `wait_seconds` that finds nothing new
registers a *watch* on its user and waits. Whoever changes a user's inbox
(the fan-out) or lists (contacts, groups, account) calls `changed(users)`:

- watches on this instance are woken at once, in memory;
- one row per user is put into the user's notify shard table,
  `chat/notify/{shard}` (16 shards, one unconditional `table_write` per
  shard touched, however many users), for the other instances.

Each instance polls, every `poll_seconds`, the shards that hold at least
one of its watches, with a *stale* `sync(shard, since=last seen)`: the
answer lists the users whose rows changed, and their watches are woken.

The cost, measured in store calls: one notify write per shard per fan-out
round (not per recipient), and per instance `shards watched / poll_seconds`
stale reads a second (at most 16 / 0.05 s = 320), independent of the number
of waiting clients. A wake-up only makes the waiter read again, so a missed
or spurious one costs latency, never correctness: a notify write that
failed, or a stale node that lags, is covered by each watch re-reading
every `recheck_seconds` anyway.

The watch is registered *before* the waiter's first read, so a change made
between that read and the wait still wakes it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging

import trio

from chat_service import keys
from chat_service.store import table_version
from kvsvr.client import Client
from kvsvr.protocol.errors import KvError

log = logging.getLogger("chat_service.notify")


@dataclasses.dataclass(frozen=True)
class NotifyLimits:
    # How often the notify shards with local watches are polled.
    poll_seconds: float = 0.05
    # A watch re-reads this often even if nothing woke it (a lost notify write).
    recheck_seconds: float = 2.0
    # Watches one instance holds at once; past it a sync does not wait.
    watches_max: int = 50_000
    # Rows one poll reads from a shard; more wait for the next poll.
    poll_rows_max: int = 1000


DEFAULT_NOTIFY_LIMITS = NotifyLimits()


class Watch:
    def __init__(self) -> None:
        self.event = trio.Event()

    async def wait(self, deadline: float) -> bool:
        """Until woken or `deadline`; True if woken."""
        with trio.move_on_at(deadline):
            await self.event.wait()
        return self.event.is_set()


class Notifier:
    def __init__(self, store: Client, limits: NotifyLimits = NotifyLimits()):
        self.store = store
        self.limits = limits
        self._watches: dict[str, set[Watch]] = collections.defaultdict(set)
        self._watch_count = 0
        self._shard_versions: dict[int, int] = {}
        self.statistics = {"notify_writes": 0, "polls": 0, "remote_wakes": 0, "local_wakes": 0}

    @contextlib.contextmanager
    def watch(self, user: str):
        """Register a watch on `user` for the duration of the block (None if full)."""
        if self._watch_count >= self.limits.watches_max:
            yield None
            return
        watch = Watch()
        self._watches[user].add(watch)
        self._watch_count += 1
        try:
            yield watch
        finally:
            self._watch_count -= 1
            watches = self._watches.get(user)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[user]

    def current_statistics(self) -> dict:
        return {**self.statistics, "watches": self._watch_count}

    def wake_local(self, users) -> int:
        woken = 0
        for user in users:
            for watch in self._watches.get(user, ()):
                watch.event.set()
                woken += 1
        return woken

    async def changed(self, users: dict[str, int]) -> None:
        """`users` (user -> the inbox version, or any counter) changed: wake them here
        and tell the other instances through the notify shards."""
        self.statistics["local_wakes"] += self.wake_local(users)
        by_shard: dict[int, list[tuple[bytes, bytes]]] = collections.defaultdict(list)
        for user, counter in users.items():
            by_shard[keys.notify_shard(user)].append((user.encode(), keys.encode_seq(counter)))

        async def write(shard: int, rows: list[tuple[bytes, bytes]]) -> None:
            try:
                await self.store.table_write(keys.notify_key(shard), rows)
                self.statistics["notify_writes"] += 1
            except KvError as error:  # push is best-effort; the recheck covers it
                log.info("notify shard %d: %s", shard, error.message)

        async with trio.open_nursery() as nursery:
            for shard, rows in by_shard.items():
                nursery.start_soon(write, shard, rows)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            watched = {keys.notify_shard(user) for user in self._watches}
            for shard in list(self._shard_versions):
                if shard not in watched:
                    del self._shard_versions[shard]
            async with trio.open_nursery() as nursery:
                for shard in watched:
                    nursery.start_soon(self._poll_shard, shard)
            await trio.sleep(self.limits.poll_seconds)

    async def _poll_shard(self, shard: int) -> None:
        key = keys.notify_key(shard)
        try:
            known = self._shard_versions.get(shard)
            if known is None:
                self._shard_versions[shard] = await table_version(self.store, key, stale=True)
                return
            result = await self.store.sync(
                key, since=known, limit=self.limits.poll_rows_max, stale=True
            )
        except KvError as error:
            log.info("polling notify shard %d: %s", shard, error.message)
            return
        self.statistics["polls"] += 1
        # A stale node may be behind the one read last time: never move back.
        self._shard_versions[shard] = max(known, result.version)
        if result.rows:
            users = [row.row_id.decode() for row in result.rows]
            self.statistics["remote_wakes"] += self.wake_local(users)
