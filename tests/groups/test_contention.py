"""Every node coordinating the same hot keys at once (no preferred routing).

Coordinators then duel: one's Prepare overtakes another's Accept. Each
loser must settle its own writes (prepare again and, when the new majority
holds no vote at that version, propose the same batch again), or a version
that every coordinator lost stays undecided until the writes time out.
"""

from __future__ import annotations

import contextlib
import random

import trio

from kvsvr.client import Client
from kvsvr.protocol.errors import Timeout

WRITERS = 6
WRITES_PER_WRITER = 40
HOT_KEYS = (b"hot-0", b"hot-1")


async def test_duelling_coordinators_settle_every_write(group):
    nodes = list(group.nodes.values())
    timeouts: list[Timeout] = []
    acknowledged: dict[bytes, set[int]] = {key: set() for key in HOT_KEYS}

    async def writer(index: int, clients: list[Client]) -> None:
        rng = random.Random(index)
        for count in range(WRITES_PER_WRITER):
            key = rng.choice(HOT_KEYS)
            client = rng.choice(clients)  # any node, not the key's preferred one
            try:
                version = await client.put(key, b"%d-%d" % (index, count))
            except Timeout as error:
                timeouts.append(error)
            else:
                assert version not in acknowledged[key], "two writes acknowledged at one version"
                acknowledged[key].add(version)

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(node.address)) for node in nodes]
        async with trio.open_nursery() as nursery:
            for index in range(WRITERS):
                nursery.start_soon(writer, index, clients)
    assert timeouts == [], f"{len(timeouts)} writes were left undecided until their deadline"
    assert sum(map(len, acknowledged.values())) == WRITERS * WRITES_PER_WRITER
