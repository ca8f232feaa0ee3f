"""Fan-out: each message into each member's inbox exactly once, one order per channel.

Theory of operation.

A message is sent to a *channel* (a group, or a one-to-one conversation,
keys.py). Sending does two writes and returns:

  1. the body, once, at `chat/message/{id}`: create-if-absent, so a retried
     send (same message id) finds its own body and goes on;
  2. an `append` of the message id to the channel's log,
     `chat/fanout/{channel}/log`. The row's id is its version: the log seq.

After (2) the message and its fan-out job are durable: the log *is* the
queue, and `chat/fanout/{channel}/cursor` says how far fan-out has
delivered. A worker drains the queue; any instance may, and the sweep
makes sure some instance does after a crash.

**The log may hold a message twice.** An append that timed out may or may
not have landed, so a sender retries it, and two concurrent retries of one
HTTP send may both append. Duplicates are made harmless, not impossible:
`chat/placed/{id}` records the message's canonical seq, written once with
create-if-absent by the worker that meets the message first in log order.
A log entry whose seq is not the canonical one is skipped. Workers walk the
log in seq order, so the canonical seq is always the first entry of the id,
and each message is fanned out at exactly one seq.

**Each inbox takes each entry once.** An inbox holds, beside its entries,
one marker row per channel, `m/{channel}` = the last seq delivered from
that channel. A delivery reads the marker and the inbox's version in one
read, keeps the entries above the marker, and writes them *together with
the new marker* in one `table_write` with `expected_version` = the version
read. Two deliveries of the same entry would both have to be conditioned
on a version where the marker is below the entry's seq; the first to land
raises the marker at every later version, so the second's condition fails.
After a `Timeout` the worker simply reads again: if the write landed, the
marker says so; if not, the version it was conditioned on is gone or
still there, and the retry is again conditional. Markers only grow and are
never trimmed, so this holds after retention trims entries too.

**One order per channel.** Entries enter every inbox in canonical-seq
order (a write only adds entries above the marker, in seq order, and the
worker hands them over in log order), so every member sees a channel's
messages in the log's order. Messages of different channels interleave
differently in different inboxes, which is fine: the order promised is
per channel.

**Who works.** A worker takes the channel's lease
(`chat/fanout/{channel}/lease`, compare-and-set, with an expiry time),
drains the log round by round (read cursor, sync the log from it, place
the entries, deliver to every member with bounded concurrency, advance the
cursor by compare-and-set) while a task renews the lease every third of its
term, and releases the lease when the log is drained. The lease only saves work: two workers on one channel
(a stale lease holder, clocks that disagree) still can't duplicate
anything, because every step above is conditional. The instance that
accepted a send starts a worker at once; every instance also sweeps the
`chat/fanout/` keys every `sweep_seconds` and starts workers for channels
whose log is ahead of their cursor and whose lease has lapsed, which is how
a crashed instance's work is picked up.

Membership: a member row holds `joined_seq`, the log's version when the
member joined; a member gets the entries above it. The recipients of an
entry are the members when the worker delivers it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable

import trio

from chat_service import keys
from chat_service.store import (
    RETRYABLE,
    StoreUnavailable,
    backoff_seconds,
    one_store_error,
    read_all_rows,
    read_value,
    table_row_and_version,
    with_retries,
)
from kvsvr.client import Client
from kvsvr.protocol.errors import ConditionFailed, KvError

log = logging.getLogger("chat_service.fanout")


@dataclasses.dataclass(frozen=True)
class FanoutLimits:
    # Log entries one round takes: one inbox write per member carries them
    # all, so a backlog is delivered in few rounds (an inbox write holds at
    # most table_batch_rows_max rows, markers included).
    round_entries_max: int = 200
    # Inbox writes in flight for one channel's round.
    deliveries_in_flight_max: int = 64
    # Channels drained at once by one instance; more kicks wait their turn.
    channels_in_flight_max: int = 32
    # Channels remembered as wanting work; past it kicks are dropped and the
    # sweep finds the work instead.
    pending_channels_max: int = 100_000
    # A lease not renewed for this long may be taken over.
    lease_seconds: float = 3.0
    # How often a worker that found another's live lease checks progress.
    lease_wait_poll_seconds: float = 0.05
    # How often the sweep looks for channels nobody drains.
    sweep_seconds: float = 1.0
    # Inbox states (version, marker) remembered from this instance's own writes.
    inbox_states_max: int = 200_000
    # Deadline of one store step before the worker backs off and starts over.
    step_deadline_seconds: float = 10.0


DEFAULT_FANOUT_LIMITS = FanoutLimits()


Notify = Callable[[dict[str, int]], Awaitable[None]]


@dataclasses.dataclass
class _Lease:
    channel: str
    version: int
    expires_at: float


class Fanout:
    """Accepts messages into channel logs and drains the logs into inboxes."""

    def __init__(
        self,
        store: Client,
        instance_id: str,
        notify: Notify,
        limits: FanoutLimits = DEFAULT_FANOUT_LIMITS,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.instance_id = instance_id
        self.notify = notify
        self.limits = limits
        self.clock = clock  # wall clock: leases are compared across instances
        self._targets: dict[str, int] = {}  # channel -> log seq it must be drained to
        # (user, channel) -> (inbox version, marker at that version), from our writes
        self._inbox_states: collections.OrderedDict[tuple[str, str], tuple[int, int]] = (
            collections.OrderedDict())
        self._wanted = trio.Semaphore(limits.channels_in_flight_max)
        self._nursery: trio.Nursery | None = None
        self.statistics = {
            "rounds": 0, "entries_delivered": 0, "duplicate_log_entries": 0,
            "inbox_conflicts": 0, "inbox_writes": 0, "lease_takeovers": 0,
        }

    # -- the send path ----------------------------------------------------------------

    async def append(self, channel: str, message_id: str, *, deadline: float) -> int:
        """Put `message_id` on the channel's log; returns its seq. A retry after a
        timeout may append it twice, which placement makes harmless."""
        seq = await with_retries(
            lambda: self.store.append(keys.fanout_key(channel, "log"), message_id.encode()),
            what=f"appending to the log of {channel}",
            deadline=deadline,
        )
        self.kick(channel, seq)
        return seq

    def kick(self, channel: str, seq: int) -> None:
        """Make sure this instance sees `channel` drained to at least `seq`."""
        if self._nursery is None:
            return
        if channel in self._targets:
            self._targets[channel] = max(self._targets[channel], seq)
            return
        if len(self._targets) >= self.limits.pending_channels_max:
            return  # the sweep will find it
        self._targets[channel] = seq
        self._nursery.start_soon(self._serve_channel, channel)

    # -- running ------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._sweep_forever)
            task_status.started()

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except KvError as error:
                log.warning("sweep failed: %s", error.message)
            await trio.sleep(self.limits.sweep_seconds)

    async def sweep(self) -> list[str]:
        """Kick every channel whose log is ahead of its cursor and whose lease
        has lapsed; returns them. One scan of `chat/fanout/` (a stale read:
        a node behind only delays the next sweep's find)."""
        state: dict[str, dict] = {}
        async for item in self.store.scan(prefix=keys.FANOUT_PREFIX):
            split = keys.split_fanout_key(item.key)
            if split is None:
                continue
            channel, part = split
            state.setdefault(channel, {})[part] = item
        now = self.clock()
        kicked = []
        for channel, parts in state.items():
            if "log" not in parts:
                continue
            cursor = keys.decode_seq(parts["cursor"].value) if "cursor" in parts else 0
            if parts["log"].version <= cursor:
                continue
            lease = parts.get("lease")
            if lease is not None and keys.decode_json(lease.value)["expires_at"] > now:
                continue
            kicked.append(channel)
            self.kick(channel, parts["log"].version)
        return kicked

    async def _serve_channel(self, channel: str) -> None:
        """Drain `channel` to its target, or watch another instance do it."""
        attempt = 0
        async with self._wanted:
            try:
                while True:
                    try:
                        cursor, _ = await self._read_cursor(channel)
                        if cursor >= self._targets[channel]:
                            return
                        lease = await self._take_lease(channel)
                        if lease is None:
                            await trio.sleep(self.limits.lease_wait_poll_seconds)
                            continue
                        try:
                            await self._drain_holding(channel, lease)
                        finally:
                            with trio.CancelScope(shield=True), trio.move_on_after(2):
                                await self._release_lease(lease)
                        attempt = 0
                    except (KvError, StoreUnavailable) as error:
                        message = getattr(error, "message", str(error))
                        log.info("fan-out of %s: %s; retrying", channel, message)
                        await trio.sleep(backoff_seconds(attempt))
                        attempt += 1
            finally:
                self._targets.pop(channel, None)

    # -- one channel ----------------------------------------------------------------------

    async def _drain_holding(self, channel: str, lease: _Lease) -> None:
        """Drain while a task keeps the lease renewed; losing it stops the drain
        (carrying on would be safe, only wasted)."""
        with one_store_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_lease, lease, nursery.cancel_scope)
                await self.drain(channel)
                nursery.cancel_scope.cancel()

    async def _keep_lease(self, lease: _Lease, drain_scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(self.limits.lease_seconds / 3)
            try:
                await self._renew_lease(lease)
            except StoreUnavailable:
                drain_scope.cancel()
                return
            except KvError:
                pass  # try again; the lease runs for a while yet

    async def drain(self, channel: str) -> int:
        """Deliver everything on the channel's log; returns the cursor reached."""
        while True:
            cursor, cursor_version = await self._read_cursor(channel)
            result = await self._step(
                functools.partial(
                    self.store.sync, keys.fanout_key(channel, "log"), since=cursor,
                    limit=self.limits.round_entries_max,
                ),
                f"reading the log of {channel}",
            )
            if not result.rows:
                return cursor
            logged = [(row.version, row.value.decode()) for row in result.rows if row.value]
            entries = await self._canonical_entries(channel, logged)
            recipients = await self._recipients(channel)
            await self._deliver_all(channel, entries, recipients)
            await self._advance_cursor(channel, cursor_version, result.version)
            self.statistics["rounds"] += 1

    async def _canonical_entries(
        self, channel: str, logged: list[tuple[int, str]]
    ) -> list[keys.InboxEntry]:
        """The log entries that are their message's canonical placement, in order."""
        placements: dict[int, int] = {}

        async def place(seq: int, message_id: str) -> None:
            placements[seq] = await self._place(message_id, seq)

        with one_store_error():
            async with trio.open_nursery() as nursery:
                for seq, message_id in logged:
                    nursery.start_soon(place, seq, message_id)
        entries = []
        for seq, message_id in logged:
            if placements[seq] == seq:
                entries.append(keys.InboxEntry(message_id, channel, seq))
            else:
                self.statistics["duplicate_log_entries"] += 1
        return entries

    async def _place(self, message_id: str, seq: int) -> int:
        """The canonical seq of `message_id`: `seq` unless an earlier entry won."""
        key = keys.placed_key(message_id)
        while True:
            try:
                await self.store.put(key, keys.encode_seq(seq), expected_version=0)
                return seq
            except ConditionFailed:
                pass
            except RETRYABLE:
                pass  # landed or not: the read below tells, the retry is conditional
            value, _ = await self._step(lambda: read_value(self.store, key), "reading a placement")
            if value is not None:
                return keys.decode_seq(value)

    async def _recipients(self, channel: str) -> dict[str, int]:
        """Member -> joined_seq (entries above it are theirs)."""
        parsed = keys.parse_channel(channel)
        if parsed.kind == "direct":
            return {user: 0 for user in parsed.users}
        rows = await self._step(
            lambda: read_all_rows(self.store, keys.members_key(parsed.group)),
            f"reading the members of {parsed.group}",
        )
        return {
            row_id.decode(): keys.decode_json(value).get("joined_seq", 0)
            for row_id, value in rows.items()
        }

    async def _deliver_all(
        self, channel: str, entries: list[keys.InboxEntry], recipients: dict[str, int]
    ) -> None:
        if not entries:
            return
        limiter = trio.Semaphore(self.limits.deliveries_in_flight_max)
        changed: dict[str, int] = {}

        async def deliver_one(user: str, joined_seq: int) -> None:
            async with limiter:
                theirs = [entry for entry in entries if entry.seq > joined_seq]
                version = await self.deliver(user, channel, theirs)
                if version is not None:
                    changed[user] = version

        with one_store_error():
            async with trio.open_nursery() as nursery:
                for user, joined_seq in recipients.items():
                    nursery.start_soon(deliver_one, user, joined_seq)
        self.statistics["entries_delivered"] += len(entries) * len(recipients)
        if changed:
            await self.notify(changed)

    async def deliver(
        self, user: str, channel: str, entries: list[keys.InboxEntry]
    ) -> int | None:
        """Write the entries above the inbox's marker for `channel`, with the new
        marker, conditionally on the version the marker was known at (see the
        theory above). Returns the inbox's new version, or None if everything
        was there.

        The marker and version come from a read, or from this worker's own last
        write to the inbox (`_inbox_states`): the state at a version never
        changes, so a write conditioned on a version we wrote ourselves is as
        safe as one conditioned on a read, and a round to a group whose members
        nobody else writes to costs one store call per member instead of two.
        """
        inbox = keys.inbox_key(user)
        marker = keys.marker_row_id(channel)
        deadline = trio.current_time() + self.limits.step_deadline_seconds
        known = self._inbox_states.pop((user, channel), None)
        attempt = 0
        while True:
            try:
                if known is None:
                    value, version = await table_row_and_version(self.store, inbox, marker)
                    known = (version, keys.decode_seq(value) if value is not None else 0)
                version, delivered = known
                pending = [entry for entry in entries if entry.seq > delivered]
                if not pending:
                    self._remember_inbox(user, channel, known)
                    return None
                puts = [(keys.entry_row_id(channel, e.seq), keys.encode_entry(e)) for e in pending]
                puts.append((marker, keys.encode_seq(pending[-1].seq)))
                self.statistics["inbox_writes"] += 1
                known = None
                new_version = await self.store.table_write(inbox, puts, expected_version=version)
                self._remember_inbox(user, channel, (new_version, pending[-1].seq))
                return new_version
            except ConditionFailed:
                # Another channel (or worker) wrote this inbox first: read again.
                self.statistics["inbox_conflicts"] += 1
                if attempt >= 3:
                    await trio.sleep(backoff_seconds(attempt - 3) / 4)
                attempt += 1
            except RETRYABLE as error:
                # Timeout: read again, the marker tells whether the write landed.
                if trio.current_time() >= deadline:
                    raise StoreUnavailable(f"delivering to {user}: {error.message}") from None
                await trio.sleep(backoff_seconds(attempt))
                attempt += 1

    def _remember_inbox(self, user: str, channel: str, state: tuple[int, int]) -> None:
        self._inbox_states[(user, channel)] = state
        while len(self._inbox_states) > self.limits.inbox_states_max:
            self._inbox_states.popitem(last=False)

    # -- cursor and lease -----------------------------------------------------------------

    async def _read_cursor(self, channel: str) -> tuple[int, int]:
        value, version = await self._step(
            lambda: read_value(self.store, keys.fanout_key(channel, "cursor")),
            f"reading the cursor of {channel}",
        )
        return (keys.decode_seq(value) if value is not None else 0), version

    async def _advance_cursor(self, channel: str, expected_version: int, seq: int) -> None:
        """Move the cursor to `seq` unless someone moved it already (then theirs stands:
        the cursor is progress bookkeeping, the inbox markers are what prevent repeats)."""
        key = keys.fanout_key(channel, "cursor")
        try:
            await self.store.put(key, keys.encode_seq(seq), expected_version=expected_version)
        except ConditionFailed:
            pass
        except RETRYABLE:
            pass  # the next round reads the cursor again and redoes at most this round

    async def _take_lease(self, channel: str) -> _Lease | None:
        key = keys.fanout_key(channel, "lease")
        value, version = await read_value(self.store, key)
        now = self.clock()
        if value is not None:
            held = keys.decode_json(value)
            if held["owner"] != self.instance_id and held["expires_at"] > now:
                return None
            if held["owner"] != self.instance_id and held["expires_at"] > 0:
                self.statistics["lease_takeovers"] += 1
        expires_at = now + self.limits.lease_seconds
        record = keys.encode_json({"owner": self.instance_id, "expires_at": expires_at})
        try:
            new_version = await self.store.put(key, record, expected_version=version)
        except ConditionFailed:
            return None
        return _Lease(channel, new_version, expires_at)

    async def _renew_lease(self, lease: _Lease) -> _Lease:
        expires_at = self.clock() + self.limits.lease_seconds
        record = keys.encode_json({"owner": self.instance_id, "expires_at": expires_at})
        try:
            version = await self.store.put(
                keys.fanout_key(lease.channel, "lease"), record, expected_version=lease.version
            )
        except ConditionFailed:
            # Taken over: stop here. Carrying on would still be safe, only wasted.
            raise StoreUnavailable(f"lost the lease of {lease.channel}") from None
        lease.version, lease.expires_at = version, expires_at
        return lease

    async def _release_lease(self, lease: _Lease) -> None:
        record = keys.encode_json({"owner": self.instance_id, "expires_at": 0})
        try:
            await self.store.put(
                keys.fanout_key(lease.channel, "lease"), record, expected_version=lease.version
            )
        except KvError:
            pass  # it expires by itself

    # -- retries ------------------------------------------------------------------------

    async def _step(self, operation, what: str):
        deadline = trio.current_time() + self.limits.step_deadline_seconds
        return await with_retries(operation, what=what, deadline=deadline)


__all__ = ["Fanout", "FanoutLimits"]
