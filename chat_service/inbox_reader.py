"""Read inboxes straight from the store, for the delivery checker.

A test or workload that wants to know what was really delivered, not what
one client happened to see, reads each inbox with `sync` from version 0:
the live entries, in inbox order. Entries trimmed by retention are gone
from this view, so check before anything is old enough to be trimmed
(service.ServiceLimits.inbox_retained_versions).
"""

from __future__ import annotations

import trio

from chat_service import keys
from chat_service.delivery_check import Delivered
from kvsvr.client import Client

READS_IN_FLIGHT_MAX = 32


async def read_inbox(client: Client, user: str) -> list[Delivered]:
    entries: list[Delivered] = []
    since = 0
    while True:
        result = await client.sync(keys.inbox_key(user), since=since)
        for row in result.rows:
            if row.value is not None and row.row_id.startswith(keys.ENTRY_ROW_PREFIX):
                entry = keys.decode_entry(row.value)
                entries.append(Delivered(entry.message_id, entry.channel))
        if not result.more:
            return entries
        since = result.version


async def read_inboxes(client: Client, users) -> dict[str, list[Delivered]]:
    inboxes: dict[str, list[Delivered]] = {}
    limiter = trio.Semaphore(READS_IN_FLIGHT_MAX)

    async def read(user: str) -> None:
        async with limiter:
            inboxes[user] = await read_inbox(client, user)

    async with trio.open_nursery() as nursery:
        for user in users:
            nursery.start_soon(read, user)
    return inboxes
