"""Simulated time: the global tick, and one sequence that orders everything within it.

Every part of a run reads `now` from the one clock, and every message put
on the network, every history event and every fresh value written takes the
next number of the one sequence, so the order of a tick's events is the
order they happened in, and a run depends on its seed alone.
"""

from __future__ import annotations


class Clock:
    def __init__(self) -> None:
        self.now = 0
        self._sequence = 0

    def advance(self) -> None:
        self.now += 1

    @property
    def last_sequence(self) -> int:
        return self._sequence

    def next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence
