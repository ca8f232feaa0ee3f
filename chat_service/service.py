"""The chat operations on the store: accounts, contacts, groups, sending, sync.

Theory of operation. A `ChatService` holds no state of its own beyond
caches that may be wrong (a trim point): every operation reads and writes
the store (keys.py has the layout), so instances are interchangeable and a
client may talk to any of them.

- Lists (contacts, a user's groups, a group's members) are Key-Table rows
  keyed by the listed id: adding is a row put, removing a row delete, both
  idempotent, so they are simply retried.
- Sending stores the body once and appends to the channel's log
  (fanout.py), then answers: the message and its fan-out job are durable.
  A send that could not be made durable before its deadline is answered
  503, saying whether it may have happened; retrying it with the same
  `message_id` is always safe.
- Sync answers what changed after each version of the client's snapshot
  (account, contacts, groups, inbox; and presence, by time) and the new
  snapshot. With `wait_seconds` it waits for a change first (notify.py).
- Retention: entries of an inbox are trimmed once the client has
  confirmed them (sent a snapshot at or past them) and they are more than
  `inbox_retained_versions` versions behind that snapshot; a snapshot
  below the trim point is answered with `inbox_trimmed_through` so the
  client knows what it can no longer fetch.
"""

from __future__ import annotations

import collections
import dataclasses
import time

import trio

from chat_service import keys
from chat_service.fanout import DEFAULT_FANOUT_LIMITS, Fanout, FanoutLimits
from chat_service.notify import DEFAULT_NOTIFY_LIMITS, Notifier, NotifyLimits
from chat_service.presence import DEFAULT_PRESENCE_RULE, Presence, PresenceRule, describe
from chat_service.store import (
    MessageIdConflict,
    StoreUnavailable,
    deadline_after,
    one_store_error,
    put_once,
    read_all_rows,
    read_value,
    table_version,
    with_retries,
)
from kvsvr.client import Client
from kvsvr.protocol.errors import ConditionFailed, KvError


class NotFoundError(Exception):
    pass


class ForbiddenError(Exception):
    pass


class ConflictError(Exception):
    pass


class BadInputError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class ServiceLimits:
    # The store work of one request must finish by then, or the request is
    # answered 503 (for a send: "retry with the same message_id").
    request_deadline_seconds: float = 10.0
    # A group's members; every message costs one inbox write per member.
    group_members_max: int = 500
    text_size_max_bytes: int = 16 * 1024
    profile_size_max_bytes: int = 16 * 1024
    # Longest long-poll a client may ask for.
    wait_max_seconds: float = 60.0
    # Inbox rows one sync answer reads (the answer says `more`).
    sync_inbox_rows_max: int = 500
    # Message bodies fetched at once for one answer.
    body_reads_in_flight_max: int = 64
    # Retention: confirmed entries this many inbox versions behind the
    # confirmed snapshot are trimmed, in batches of at least trim_batch_versions.
    inbox_retained_versions: int = 2000
    trim_batch_versions: int = 200
    trim_rows_max: int = 900
    # Users whose trim point this instance remembers.
    trim_cache_users_max: int = 100_000


@dataclasses.dataclass(frozen=True)
class Snapshot:
    account: int = 0
    contacts: int = 0
    groups: int = 0
    inbox: int = 0
    presence: float = 0.0  # wall-clock seconds of the last presence answer

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class ChatService:
    def __init__(
        self,
        store: Client,
        *,
        instance_id: str,
        limits: ServiceLimits = ServiceLimits(),
        fanout_limits: FanoutLimits = DEFAULT_FANOUT_LIMITS,
        notify_limits: NotifyLimits = DEFAULT_NOTIFY_LIMITS,
        presence_rule: PresenceRule = DEFAULT_PRESENCE_RULE,
        clock=time.time,
    ):
        self.store = store
        self.instance_id = instance_id
        self.limits = limits
        self.clock = clock
        self.notifier = Notifier(store, notify_limits)
        self.fanout = Fanout(store, instance_id, self.notifier.changed, fanout_limits, clock)
        self.presence = Presence(store, presence_rule, clock)
        self._trimmed_through: collections.OrderedDict[str, int] = collections.OrderedDict()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.fanout.run)
            await nursery.start(self.notifier.run)
            task_status.started()

    def statistics(self) -> dict:
        return {"fanout": dict(self.fanout.statistics), "notify": self.notifier.current_statistics(),
                "presence": dict(self.presence.statistics)}

    # -- helpers --------------------------------------------------------------------------

    def _deadline(self) -> float:
        return deadline_after(self.limits.request_deadline_seconds)

    async def _retry(self, operation, what: str):
        return await with_retries(operation, what=what, deadline=self._deadline())

    async def _account(self, user: str) -> tuple[dict, int]:
        keys.check_identifier(user, "user")
        value, version = await self._retry(
            lambda: read_value(self.store, keys.account_key(user)), f"reading account {user}"
        )
        if value is None:
            raise NotFoundError(f"no account {user!r}")
        return keys.decode_json(value), version

    async def _group(self, group: str) -> dict:
        keys.check_identifier(group, "group")
        value, _ = await self._retry(
            lambda: read_value(self.store, keys.group_key(group)), f"reading group {group}"
        )
        if value is None:
            raise NotFoundError(f"no group {group!r}")
        return keys.decode_json(value)

    async def _require_member(self, group: str, user: str) -> None:
        row = await self._retry(
            lambda: self.store.table_get(keys.members_key(group), user.encode()),
            f"reading the members of {group}",
        )
        if row is None:
            raise ForbiddenError(f"{user!r} is not a member of group {group!r}")

    async def _changed(self, users) -> None:
        await self.notifier.changed({user: 0 for user in users})

    # -- accounts and contacts ----------------------------------------------------------------

    async def create_account(self, user: str, name: str, profile: dict) -> dict:
        keys.check_identifier(user, "user")
        record = {"user": user, "name": name, "profile": profile, "created_at": self.clock()}
        value = keys.encode_json(record)
        self._check_size(value, self.limits.profile_size_max_bytes, "profile")

        def same(existing: bytes) -> bool:
            held = keys.decode_json(existing)
            return (held["name"], held["profile"]) == (name, profile)

        try:
            stored = await put_once(
                self.store, keys.account_key(user), value, same=same, deadline=self._deadline()
            )
        except MessageIdConflict:
            raise ConflictError(f"account {user!r} exists") from None
        return keys.decode_json(stored)

    async def get_account(self, user: str) -> dict:
        record, version = await self._account(user)
        presence = await self.presence.read(user)
        return {**record, "version": version, "presence": describe(presence, self.clock())}

    async def update_account(self, user: str, name: str | None, profile: dict | None) -> dict:
        while True:
            record, version = await self._account(user)
            if name is not None:
                record["name"] = name
            if profile is not None:
                record["profile"] = profile
            value = keys.encode_json(record)
            self._check_size(value, self.limits.profile_size_max_bytes, "profile")
            try:
                new_version = await self.store.put(
                    keys.account_key(user), value, expected_version=version
                )
            except ConditionFailed:
                continue  # a concurrent update (or our own timed-out one): read again
            except KvError as error:
                if error.indeterminate:
                    continue
                raise StoreUnavailable(error.message) from None
            await self._changed([user])
            return {**record, "version": new_version}

    async def add_contact(self, user: str, contact: str) -> int:
        await self._account(user)
        await self._account(contact)
        row = keys.encode_json({"since": self.clock()})
        version = await self._retry(
            lambda: self.store.table_write(keys.contacts_key(user), {contact.encode(): row}),
            f"adding contact {contact}",
        )
        await self._changed([user])
        return version

    async def remove_contact(self, user: str, contact: str) -> int:
        keys.check_identifier(contact, "contact")
        await self._account(user)
        version = await self._retry(
            lambda: self.store.table_write(keys.contacts_key(user), deletes=[contact.encode()]),
            f"removing contact {contact}",
        )
        await self._changed([user])
        return version

    async def contacts(self, user: str) -> list[str]:
        rows = await self._retry(
            lambda: read_all_rows(self.store, keys.contacts_key(user)), "reading contacts"
        )
        return sorted(row_id.decode() for row_id in rows)

    # -- groups ---------------------------------------------------------------------------------

    async def create_group(self, group: str, name: str, owner: str, members: list[str]) -> dict:
        keys.check_identifier(group, "group")
        members = sorted(set(members) | {owner})
        for member in members:
            keys.check_identifier(member, "member")
        if len(members) > self.limits.group_members_max:
            raise BadInputError(
                f"a group has at most {self.limits.group_members_max} members, not {len(members)}"
            )
        await self._require_accounts(members)
        record = {"group": group, "name": name, "owner": owner, "created_at": self.clock()}

        def same(existing: bytes) -> bool:
            held = keys.decode_json(existing)
            return (held["name"], held["owner"]) == (name, owner)

        try:
            await put_once(self.store, keys.group_key(group), keys.encode_json(record),
                           same=same, deadline=self._deadline())
        except MessageIdConflict:
            raise ConflictError(f"group {group!r} exists") from None
        joined = keys.encode_json({"joined_seq": 0})
        await self._retry(
            lambda: self.store.table_write(
                keys.members_key(group), {member.encode(): joined for member in members}
            ),
            f"writing the members of {group}",
        )
        await self._add_memberships(group, name, members)
        return {"group": group, "name": name, "owner": owner, "members": members}

    async def _require_accounts(self, users: list[str]) -> None:
        missing = []
        limiter = trio.Semaphore(64)

        async def check(user: str) -> None:
            async with limiter:
                try:
                    await self._account(user)
                except NotFoundError:
                    missing.append(user)

        with one_store_error():
            async with trio.open_nursery() as nursery:
                for user in users:
                    nursery.start_soon(check, user)
        if missing:
            raise NotFoundError(f"no accounts {sorted(missing)[:10]!r}")

    async def _add_memberships(self, group: str, name: str, members: list[str]) -> None:
        row = keys.encode_json({"name": name})
        limiter = trio.Semaphore(64)

        async def add(member: str) -> None:
            async with limiter:
                await self._retry(
                    lambda: self.store.table_write(keys.groups_key(member), {group.encode(): row}),
                    f"adding {group} to the groups of {member}",
                )

        with one_store_error():
            async with trio.open_nursery() as nursery:
                for member in members:
                    nursery.start_soon(add, member)
        await self._changed(members)

    async def get_group(self, group: str) -> dict:
        record = await self._group(group)
        rows = await self._retry(
            lambda: read_all_rows(self.store, keys.members_key(group)), "reading members"
        )
        return {**record, "members": sorted(row_id.decode() for row_id in rows)}

    async def add_member(self, group: str, user: str) -> dict:
        record = await self._group(group)
        await self._account(user)
        members = await self._retry(
            lambda: read_all_rows(self.store, keys.members_key(group)), "reading members"
        )
        if user.encode() not in members and len(members) >= self.limits.group_members_max:
            raise BadInputError(f"group {group!r} is full ({self.limits.group_members_max})")
        # A new member gets the messages logged after it joined.
        log_version = await self._retry(
            lambda: table_version(self.store, keys.fanout_key(keys.group_channel(group), "log")),
            "reading the group log",
        )
        row = keys.encode_json({"joined_seq": log_version})
        if user.encode() not in members:
            await self._retry(
                lambda: self.store.table_write(keys.members_key(group), {user.encode(): row}),
                f"adding {user} to {group}",
            )
        await self._add_memberships(group, record["name"], [user])
        return {"group": group, "user": user, "joined_seq": log_version}

    async def remove_member(self, group: str, user: str) -> None:
        await self._group(group)
        keys.check_identifier(user, "user")
        await self._retry(
            lambda: self.store.table_write(keys.members_key(group), deletes=[user.encode()]),
            f"removing {user} from {group}",
        )
        await self._retry(
            lambda: self.store.table_write(keys.groups_key(user), deletes=[group.encode()]),
            f"removing {group} from the groups of {user}",
        )
        await self._changed([user])

    # -- sending -----------------------------------------------------------------------------------

    async def send_direct(
        self, sender: str, recipient: str, text: str, message_id: str
    ) -> dict:
        await self._account(sender)
        await self._account(recipient)
        return await self._send(keys.direct_channel(sender, recipient), sender, text, message_id)

    async def send_group(self, sender: str, group: str, text: str, message_id: str) -> dict:
        await self._group(group)
        await self._require_member(group, sender)
        return await self._send(keys.group_channel(group), sender, text, message_id)

    async def _send(self, channel: str, sender: str, text: str, message_id: str) -> dict:
        keys.check_identifier(message_id, "message_id")
        deadline = self._deadline()
        record = {"message_id": message_id, "channel": channel, "from": sender, "text": text,
                  "sent_at": self.clock()}
        value = keys.encode_json(record)
        self._check_size(value, self.limits.text_size_max_bytes, "text")

        def same(existing: bytes) -> bool:
            held = keys.decode_json(existing)
            return (held["channel"], held["from"], held["text"]) == (channel, sender, text)

        try:
            stored = await put_once(
                self.store, keys.message_key(message_id), value, same=same, deadline=deadline
            )
        except MessageIdConflict:
            raise ConflictError(
                f"message id {message_id!r} was used for a different message"
            ) from None
        seq = await self.fanout.append(channel, message_id, deadline=deadline)
        held = keys.decode_json(stored)
        return {"message_id": message_id, "channel": channel, "log_seq": seq,
                "sent_at": held["sent_at"]}

    # -- sync ------------------------------------------------------------------------------------------

    async def sync(self, user: str, snapshot: Snapshot, wait_seconds: float = 0.0) -> dict:
        await self._account(user)
        wait_deadline = trio.current_time() + min(max(wait_seconds, 0.0),
                                                  self.limits.wait_max_seconds)
        recheck = self.notifier.limits.recheck_seconds
        with self.notifier.watch(user) as watch:
            while True:
                if watch is not None:
                    watch.event = trio.Event()  # changes from here on wake us
                answer = await self._collect(user, snapshot)
                if answer["changed"] or watch is None or trio.current_time() >= wait_deadline:
                    break
                await watch.wait(min(wait_deadline, trio.current_time() + recheck))
        await self._maybe_trim(user, snapshot.inbox)
        return answer

    async def _collect(self, user: str, snapshot: Snapshot) -> dict:
        results: dict = {}
        now = self.clock()
        presence_due = now - snapshot.presence >= self.presence.rule.refresh_seconds

        async def read(name: str, operation) -> None:
            results[name] = await self._retry(operation, f"syncing {name}")

        with one_store_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, "account", lambda: read_value(
                    self.store, keys.account_key(user)))
                nursery.start_soon(read, "contacts", lambda: self.store.sync(
                    keys.contacts_key(user), since=snapshot.contacts))
                nursery.start_soon(read, "groups", lambda: self.store.sync(
                    keys.groups_key(user), since=snapshot.groups))
                nursery.start_soon(read, "inbox", lambda: self.store.sync(
                    keys.inbox_key(user), since=snapshot.inbox,
                    limit=self.limits.sync_inbox_rows_max))
                if presence_due:
                    nursery.start_soon(read, "contact_list", lambda: read_all_rows(
                        self.store, keys.contacts_key(user)))
                if user not in self._trimmed_through:
                    nursery.start_soon(read, "trim_row", lambda: self.store.table_get(
                        keys.inbox_key(user), keys.TRIM_ROW))

        account_value, account_version = results["account"]
        answer: dict = {"user": user}
        if account_value is not None and account_version > snapshot.account:
            answer["account"] = {**keys.decode_json(account_value), "version": account_version}
        answer["contacts"] = [
            {"user": row.row_id.decode(), "removed": row.value is None}
            for row in results["contacts"].rows
        ]
        answer["groups"] = [
            {"group": row.row_id.decode(), "removed": row.value is None,
             **({} if row.value is None else keys.decode_json(row.value))}
            for row in results["groups"].rows
        ]
        inbox = results["inbox"]
        entries = [
            (row.version, keys.decode_entry(row.value)) for row in inbox.rows
            if row.value is not None and row.row_id.startswith(keys.ENTRY_ROW_PREFIX)
        ]
        answer["messages"] = await self._messages(user, entries)
        answer["more"] = inbox.more
        presence = {}
        new_presence_time = snapshot.presence
        if presence_due:
            contact_list = [row_id.decode() for row_id in results["contact_list"]]
            presence = await self.presence.changes(contact_list, snapshot.presence, now)
            new_presence_time = now
        answer["presence"] = presence
        # The trim point: read once per user and instance, then kept up to date
        # by this instance's trims and by the inbox's `t` row whenever an answer
        # carries it (a trim by another instance).
        if "trim_row" in results:
            row = results["trim_row"]
            self._remember_trim(user, keys.decode_seq(row.value) if row else 0)
        trimmed = self._trimmed_through.get(user, 0)
        for row in inbox.rows:
            if row.row_id == keys.TRIM_ROW and row.value is not None:
                trimmed = max(trimmed, keys.decode_seq(row.value))
        if trimmed > self._trimmed_through.get(user, 0):
            self._remember_trim(user, trimmed)
        if snapshot.inbox < trimmed:
            answer["inbox_trimmed_through"] = trimmed
        answer["snapshot"] = Snapshot(
            account=max(account_version, snapshot.account),
            contacts=max(results["contacts"].version, snapshot.contacts),
            groups=max(results["groups"].version, snapshot.groups),
            inbox=max(inbox.version, snapshot.inbox),
            presence=new_presence_time,
        ).as_dict()
        answer["changed"] = bool(
            "account" in answer or answer["contacts"] or answer["groups"] or answer["messages"]
            or presence or inbox.version > snapshot.inbox
        )
        return answer

    async def _messages(self, user: str, entries: list[tuple[int, keys.InboxEntry]]) -> list[dict]:
        bodies: dict[str, dict] = {}
        limiter = trio.Semaphore(self.limits.body_reads_in_flight_max)

        async def fetch(message_id: str) -> None:
            async with limiter:
                value, _ = await self._retry(
                    lambda: read_value(self.store, keys.message_key(message_id)),
                    "reading a message",
                )
            assert value is not None, f"inbox entry for a message with no body: {message_id}"
            bodies[message_id] = keys.decode_json(value)

        with one_store_error():
            async with trio.open_nursery() as nursery:
                for message_id in {entry.message_id for _, entry in entries}:
                    nursery.start_soon(fetch, message_id)
        messages = []
        for inbox_version, entry in entries:
            body = bodies[entry.message_id]
            channel = keys.parse_channel(entry.channel)
            message = {"message_id": entry.message_id, "channel": entry.channel, "seq": entry.seq,
                       "inbox_version": inbox_version, "from": body["from"],
                       "text": body["text"], "sent_at": body["sent_at"]}
            if channel.kind == "group":
                message["group"] = channel.group
            else:
                others = [other for other in channel.users if other != user]
                message["peer"] = others[0] if others else user
            messages.append(message)
        return messages

    async def _maybe_trim(self, user: str, confirmed: int) -> None:
        """Delete confirmed entries more than `inbox_retained_versions` behind."""
        target = confirmed - self.limits.inbox_retained_versions
        if target <= 0:
            return
        inbox = keys.inbox_key(user)
        try:
            if user not in self._trimmed_through:
                row = await self.store.table_get(inbox, keys.TRIM_ROW)
                self._remember_trim(user, keys.decode_seq(row.value) if row else 0)
            trimmed = self._trimmed_through[user]
            if target - trimmed < self.limits.trim_batch_versions:
                return
            result = await self.store.sync(inbox, since=trimmed, limit=self.limits.trim_rows_max)
            through = min(target, result.version)
            deletes = [
                row.row_id for row in result.rows
                if row.version <= through and row.value is not None
                and row.row_id.startswith(keys.ENTRY_ROW_PREFIX)
            ]
            # Unconditional: deleting is idempotent, and a trim racing another
            # only redoes some deletes.
            await self.store.table_write(
                inbox, {keys.TRIM_ROW: keys.encode_seq(through)}, deletes=deletes
            )
            self._remember_trim(user, through)
        except KvError:
            return  # the next sync tries again

    def _remember_trim(self, user: str, through: int) -> None:
        self._trimmed_through[user] = through
        self._trimmed_through.move_to_end(user)
        while len(self._trimmed_through) > self.limits.trim_cache_users_max:
            self._trimmed_through.popitem(last=False)

    @staticmethod
    def _check_size(value: bytes, limit: int, what: str) -> None:
        if len(value) > limit:
            raise BadInputError(f"{what} is {len(value)} bytes; the limit is {limit}")


__all__ = ["ChatService", "ServiceLimits", "Snapshot", "StoreUnavailable"]
