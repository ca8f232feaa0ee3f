"""The simulated network: delays, drops, duplicates, reordering and partitions.

Theory of operation. A message sent is put in one heap ordered by (tick of
delivery, sequence); every message gets a delay drawn from its channel's
range (the stream channel is slower than the consensus channel, so payloads
often arrive after their Accept, and messages overtake each other). While
faults are on, a message may be dropped or delivered twice, and a pair of
nodes on opposite sides of a partition hears nothing from each other until
the partition's drawn end. A node's messages to itself are delivered at
once and never lost in transit (they die with the node, which the
simulation handles). `heal` switches every fault off for good.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator

from kvsvr.replication.messages import STREAM_MESSAGES

from .clock import Clock
from .faults import Faults, draw_partition


class Network:
    def __init__(self, rng: random.Random, faults: Faults, clock: Clock):
        self._rng = rng
        self._faults = faults
        self._clock = clock
        self.faulty = True
        self._queue: list = []  # heap of (deliver_at, sequence, source, destination, message)
        self._cut: dict[frozenset, int] = {}  # partitioned pairs -> healed at tick

    def send(self, source: int, destination: int, message) -> None:
        if source == destination:
            self.enqueue(self._clock.now, source, destination, message)
            return
        if self.faulty:
            if self.is_cut(source, destination):
                return
            if self._rng.random() < self._faults.drop_probability:
                return
        delay_range = (
            self._faults.stream_delay_ticks
            if isinstance(message, STREAM_MESSAGES)
            else self._faults.consensus_delay_ticks
        )
        self.enqueue(self._clock.now + self._rng.randint(*delay_range), source, destination,
                     message)
        if self.faulty and self._rng.random() < self._faults.duplicate_probability:
            self.enqueue(self._clock.now + self._rng.randint(*delay_range), source, destination,
                         message)

    def enqueue(self, deliver_at: int, source: int, destination: int, message) -> None:
        heapq.heappush(
            self._queue, (deliver_at, self._clock.next_sequence(), source, destination, message)
        )

    def due(self) -> Iterator[tuple[int, int, object]]:
        """(source, destination, message) of every message due by now, in order.

        Messages sent while this runs are delivered too if they fall due now.
        """
        while self._queue and self._queue[0][0] <= self._clock.now:
            _, _, source, destination, message = heapq.heappop(self._queue)
            if self.faulty and self.is_cut(source, destination):
                continue
            yield source, destination, message

    def is_cut(self, source: int, destination: int) -> bool:
        return frozenset((source, destination)) in self._cut

    def partition(self, shape: str, member_ids) -> str:
        """Cut every pair across two drawn sides until a drawn tick; say what was cut."""
        sides, bridge = draw_partition(self._rng, member_ids, shape)
        until = self._clock.now + self._rng.randint(*self._faults.partition_duration_ticks)
        for one in sides[0]:
            for other in sides[1]:
                pair = frozenset((one, other))
                self._cut[pair] = max(until, self._cut.get(pair, 0))
        shown = " | ".join(",".join(f"n{node}" for node in sorted(side)) for side in sides)
        if bridge is not None:
            shown += f" (n{bridge} bridges)"
        return f"partition {shown} until {until}"

    def end_partitions_due(self) -> None:
        for pair, healed_at in list(self._cut.items()):
            if healed_at <= self._clock.now:
                del self._cut[pair]

    def heal(self) -> None:
        self.faulty = False
        self._cut.clear()
