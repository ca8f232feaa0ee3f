"""Presence: online/offline from heartbeats, with expiry, coalesced both ways.

Theory of operation. Presence, not messages, dominates an IM system's load:
every online client heartbeats, and every contact wants to see it. Both
directions are coalesced.

Writes. A user's presence is one record, `chat/presence/{user}` =
{state, changed_at, expires_at}. A client heartbeats every
`heartbeat_seconds` (15 s) while online. `next_record` (a pure function of
the stored record, the reported state and the time) decides whether the
store needs a write at all:

- a state change (offline -> online, online -> offline) is written at once;
- a heartbeat of a user already online only *extends* the expiry, and only
  when less than `refresh_below_heartbeats` heartbeats of it are left: the
  record is written online with `expires_at = now + expiry_heartbeats x
  heartbeat_seconds` (45 s), so a steady online user costs one write per
  ~2 heartbeats, not one per heartbeat;
- nobody writes "offline" for a client that just vanished: its record
  expires, and readers treat an expired online record as offline since
  `expires_at`.

Reads. Contacts see presence through sync: a sync answer carries the
presence of the user's contacts whose presence changed after the
snapshot's `presence` time, and at most once per `refresh_seconds` per
client (the snapshot carries the time of the last presence answer). A
presence change never wakes a waiting sync by itself; it rides along with
the next answer. Reads are stale reads of the contacts' records: cheap,
and a few milliseconds behind at worst.

Times are wall-clock seconds (records are compared across instances).
"""

from __future__ import annotations

import dataclasses

import trio

from chat_service import keys
from kvsvr.client import Client
from kvsvr.protocol.errors import KvError


@dataclasses.dataclass(frozen=True)
class PresenceRule:
    heartbeat_seconds: float = 15.0
    expiry_heartbeats: int = 3
    refresh_below_heartbeats: int = 2
    # A client gets its contacts' presence at most this often.
    refresh_seconds: float = 5.0
    # Contacts whose presence one sync reads at once.
    reads_in_flight_max: int = 64

    @property
    def expiry_seconds(self) -> float:
        return self.expiry_heartbeats * self.heartbeat_seconds


DEFAULT_PRESENCE_RULE = PresenceRule()


STATES = ("online", "offline")


@dataclasses.dataclass(frozen=True, slots=True)
class PresenceRecord:
    state: str
    changed_at: float
    expires_at: float

    def online_at(self, now: float) -> bool:
        return self.state == "online" and self.expires_at > now

    def changed_at_as_of(self, now: float) -> float:
        """When the presence a reader sees at `now` began (an expiry is a change)."""
        if self.state == "online" and self.expires_at <= now:
            return self.expires_at
        return self.changed_at

    def encode(self) -> bytes:
        return keys.encode_json(dataclasses.asdict(self))

    @classmethod
    def decode(cls, value: bytes) -> PresenceRecord:
        record = keys.decode_json(value)
        return cls(record["state"], record["changed_at"], record["expires_at"])


def next_record(
    stored: PresenceRecord | None, state: str, now: float, rule: PresenceRule
) -> PresenceRecord | None:
    """The record to write for a report of `state` at `now`, or None: nothing to write."""
    assert state in STATES, state
    was_online = stored is not None and stored.online_at(now)
    if state == "offline":
        if not was_online:
            return None
        return PresenceRecord("offline", now, now)
    if was_online:
        remaining = stored.expires_at - now
        if remaining >= rule.refresh_below_heartbeats * rule.heartbeat_seconds:
            return None  # coalesced: the stored expiry still covers this heartbeat
        return PresenceRecord("online", stored.changed_at, now + rule.expiry_seconds)
    return PresenceRecord("online", now, now + rule.expiry_seconds)


def changed_after(record: PresenceRecord, since: float, now: float) -> bool:
    return since < record.changed_at_as_of(now) <= now


def describe(record: PresenceRecord | None, now: float) -> dict:
    if record is None:
        return {"online": False, "since": None}
    return {"online": record.online_at(now), "since": record.changed_at_as_of(now)}


class Presence:
    """Heartbeats in, contacts' presence out, against the store."""

    def __init__(self, store: Client, rule: PresenceRule, clock):
        self.store = store
        self.rule = rule
        self.clock = clock
        self.statistics = {"heartbeats": 0, "writes": 0}

    async def read(self, user: str) -> PresenceRecord | None:
        item = await self.store.get(keys.presence_key(user), stale=True)
        return None if item is None else PresenceRecord.decode(item.value)

    async def report(self, user: str, state: str) -> dict:
        """A heartbeat (or an explicit change) from `user`'s client."""
        self.statistics["heartbeats"] += 1
        now = self.clock()
        stored = await self.read(user)
        record = next_record(stored, state, now, self.rule)
        if record is not None:
            # Last writer wins: presence is soft state, and a lost race is
            # corrected by the next heartbeat.
            await self.store.put(keys.presence_key(user), record.encode())
            self.statistics["writes"] += 1
        answer = describe(record or stored, now)
        answer["written"] = record is not None
        answer["heartbeat_seconds"] = self.rule.heartbeat_seconds
        return answer

    async def changes(self, users: list[str], since: float, now: float) -> dict[str, dict]:
        """Presence of the `users` whose presence changed after `since`."""
        found: dict[str, dict] = {}
        limiter = trio.Semaphore(self.rule.reads_in_flight_max)

        async def look(user: str) -> None:
            async with limiter:
                try:
                    record = await self.read(user)
                except KvError:
                    return  # presence is best-effort; the next refresh tries again
            if record is not None and changed_after(record, since, now):
                found[user] = describe(record, now)
            elif record is None and since == 0:
                found[user] = describe(None, now)

        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(look, user)
        return found
