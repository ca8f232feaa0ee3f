"""A small replica group driven by hand, for the unit tests of the core.

`Group` runs real `Replica` objects over `MemoryStorage` and keeps every
message in flight in one list, so a test decides what is delivered, held,
dropped or reordered. It obeys the effects order as the node shell does:
sync, then messages, then replies.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from kvsvr.core import model
from kvsvr.core.requests import Get, Sync, Write
from kvsvr.replication.messages import Effects, Message
from kvsvr.replication.replica import Replica, ReplicaOptions
from kvsvr.storage import MemoryStorage

Envelope = tuple[int, int, Message]  # (source, destination, message)

# The rule tests deliver by hand and tick only where time is the point, so
# their replicas fetch a missing payload and ack a stream batch at once;
# tests of those timings use the defaults.
AT_ONCE = ReplicaOptions(payload_fetch_grace_ticks=0, stream_ack_records_max=1)


class Group:
    def __init__(self, members: int = 3, options: ReplicaOptions | None = None, seed: int = 0):
        self.member_ids = tuple(range(1, members + 1))
        self.options = options or AT_ONCE
        self.rng = random.Random(seed)
        self.storages = {node_id: MemoryStorage() for node_id in self.member_ids}
        self.replicas: dict[int, Replica | None] = {}
        self.in_flight: list[Envelope] = []
        self.sent: list[Envelope] = []  # everything ever sent, in order
        self.replies: dict[int, object] = {}
        self.events: list = []  # what the replicas told their observer (events.py)
        self._next_request_id = 1
        for node_id in self.member_ids:
            self.start(node_id)

    # -- nodes -----------------------------------------------------------------

    def start(self, node_id: int) -> Effects:
        replica = Replica(
            node_id,
            self.member_ids,
            self.storages[node_id],
            random.Random(self.rng.getrandbits(64)),
            self.options,
            observer=self.events.append,
        )
        self.replicas[node_id] = replica
        effects = replica.start()
        self.carry_out(node_id, effects)
        return effects

    def crash(self, node_id: int, unsynced_batches_kept: int = 0) -> None:
        """Stop a node; its storage keeps what was synced (and a prefix of the rest)."""
        self.storages[node_id].crash(unsynced_batches_kept)
        self.replicas[node_id] = None
        self.in_flight = [envelope for envelope in self.in_flight if envelope[0] != node_id]

    def replica(self, node_id: int) -> Replica:
        replica = self.replicas[node_id]
        assert replica is not None, f"n{node_id} is down"
        return replica

    def carry_out(self, node_id: int, effects: Effects) -> Effects:
        if effects.sync:
            self.storages[node_id].sync()
        for destination, message in effects.messages:
            envelope = (node_id, destination, message)
            self.in_flight.append(envelope)
            self.sent.append(envelope)
        for request_id, answer in effects.replies:
            assert request_id not in self.replies, f"request {request_id} answered twice"
            self.replies[request_id] = answer
        return effects

    # -- clients ---------------------------------------------------------------

    def submit(self, node_id: int, request) -> int:
        request_id = self._next_request_id
        self._next_request_id += 1
        self.carry_out(node_id, self.replica(node_id).submit(request_id, request))
        return request_id

    def put(self, node_id: int, key: bytes, value: bytes, condition=model.NO_CONDITION) -> int:
        return self.submit(node_id, Write(key, model.Put(value), condition))

    def delete(self, node_id: int, key: bytes, condition=model.NO_CONDITION) -> int:
        return self.submit(node_id, Write(key, model.Delete(), condition))

    def append(self, node_id: int, key: bytes, value: bytes) -> int:
        return self.submit(node_id, Write(key, model.Append(value), model.NO_CONDITION))

    def get(self, node_id: int, key: bytes) -> int:
        return self.submit(node_id, Get(key))

    def sync_table(self, node_id: int, key: bytes, since: int = 0) -> int:
        return self.submit(node_id, Sync(key, since, 10_000))

    # -- the network -----------------------------------------------------------

    def step(self, source: int, destination: int, message: Message) -> Effects:
        """Deliver one message now (a crashed destination drops it)."""
        replica = self.replicas[destination]
        if replica is None:
            return Effects()
        return self.carry_out(destination, replica.step(source, message))

    def take(self, matches: Callable[[int, int, Message], bool]) -> list[Envelope]:
        """Remove and return the in-flight messages that match (to hold or drop them)."""
        taken = [envelope for envelope in self.in_flight if matches(*envelope)]
        self.in_flight = [envelope for envelope in self.in_flight if not matches(*envelope)]
        return taken

    def deliver(
        self,
        matches: Callable[[int, int, Message], bool] = lambda source, destination, message: True,
        steps_max: int = 100_000,
    ) -> int:
        """Deliver matching messages, oldest first, until none match; returns how many."""
        delivered = 0
        while delivered < steps_max:
            index = next(
                (i for i, envelope in enumerate(self.in_flight) if matches(*envelope)), None
            )
            if index is None:
                return delivered
            source, destination, message = self.in_flight.pop(index)
            self.step(source, destination, message)
            delivered += 1
        raise AssertionError(f"still delivering after {steps_max} messages")

    def tick(self, ticks: int = 1, nodes: tuple[int, ...] | None = None) -> None:
        for _ in range(ticks):
            for node_id in nodes or self.member_ids:
                replica = self.replicas[node_id]
                if replica is not None:
                    self.carry_out(node_id, replica.tick())

    def run(self, ticks: int, matches=lambda source, destination, message: True) -> None:
        """Tick and deliver matching messages, `ticks` times."""
        for _ in range(ticks):
            self.tick()
            self.deliver(matches)

    def run_until(self, condition: Callable[[], bool], ticks_max: int = 2000, matches=None) -> int:
        """Tick and deliver until `condition` holds; the ticks it took."""
        matches = matches or (lambda source, destination, message: True)
        for ticks in range(ticks_max):
            self.deliver(matches)
            if condition():
                return ticks
            self.tick()
        raise AssertionError(f"condition not reached in {ticks_max} ticks")

    def answered(self, *request_ids: int) -> bool:
        return all(request_id in self.replies for request_id in request_ids)


def of_type(*types) -> Callable[[int, int, Message], bool]:
    return lambda source, destination, message: isinstance(message, types)


def between(
    source: int | None = None, destination: int | None = None, types: tuple = ()
) -> Callable[[int, int, Message], bool]:
    def matches(message_source: int, message_destination: int, message: Message) -> bool:
        return (
            (source is None or message_source == source)
            and (destination is None or message_destination == destination)
            and (not types or isinstance(message, types))
        )

    return matches


def not_(matches: Callable[[int, int, Message], bool]) -> Callable[[int, int, Message], bool]:
    return lambda source, destination, message: not matches(source, destination, message)


def none_of(*matchers: Callable[[int, int, Message], bool]) -> Callable[[int, int, Message], bool]:
    return lambda source, destination, message: not any(
        matches(source, destination, message) for matches in matchers
    )
