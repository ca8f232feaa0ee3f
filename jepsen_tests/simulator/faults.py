"""What may go wrong in a simulated run, and how often.

`Faults` holds every fault's rate and range; the network (network.py) and
the simulation (simulation.py) draw from it with the run's one seeded
random. Rates are per tick or per message; ranges are in ticks.
"""

from __future__ import annotations

import dataclasses
import random

PARTITION_SHAPES = ("isolate", "split", "bridge")


@dataclasses.dataclass(frozen=True)
class Faults:
    drop_probability: float = 0.03
    duplicate_probability: float = 0.03
    consensus_delay_ticks: tuple[int, int] = (1, 3)
    stream_delay_ticks: tuple[int, int] = (1, 8)
    crash_probability_per_tick: float = 0.004
    crash_before_sync_probability: float = 0.3  # of a crash: land between write and sync
    restart_delay_ticks: tuple[int, int] = (5, 60)
    partition_probability_per_tick: float = 0.006
    partition_duration_ticks: tuple[int, int] = (10, 120)
    # A partition isolates one node, splits the group in two (2|3 on five),
    # or leaves one node as a bridge between two sides cut from each other.
    partition_shapes: tuple[str, ...] = PARTITION_SHAPES
    # A message reaching a node that is down waits in its sender's link and
    # is delivered to the node's next incarnation, as the node shell's
    # peer links do (unless the sender crashes first: its queue dies with it).
    held_across_restart_probability: float = 0.5
    held_messages_max: int = 256  # per destination
    # Crashes at protocol moments, right after the step's messages left:
    # granting a Prepare, voting for an Accept, winning an Accept round,
    # and installing a state transfer below a vote the replica holds.
    crash_after_promise_probability: float = 0.01
    crash_after_vote_probability: float = 0.003
    crash_after_win_probability: float = 0.01
    crash_after_state_below_vote_probability: float = 0.5
    # Share of runs in which each node syncs once per tick for all its steps.
    group_commit_run_probability: float = 0.5
    # Share of runs with a tiny log and quick payload collection.
    small_log_run_probability: float = 0.35

    @property
    def crash_between_write_and_sync_probability(self) -> float:
        """Per sync: the chance the node crashes after its writes, before the sync."""
        return self.crash_probability_per_tick * self.crash_before_sync_probability

    @property
    def crash_at_a_random_moment_probability(self) -> float:
        """Per tick and node: the chance of a crash between steps."""
        return self.crash_probability_per_tick * (1 - self.crash_before_sync_probability)


def draw_partition(
    rng: random.Random, member_ids, shape: str
) -> tuple[tuple[list[int], list[int]], int | None]:
    """Two sides to cut from each other, and the node that bridges them if any.

    isolate: one node | the rest; split: a random cut (2|3 or 1|4 on five);
    bridge: one node keeps its links to both sides, which are cut from each
    other (each side may then hear of the other only through it).
    """
    if shape not in PARTITION_SHAPES:
        raise ValueError(f"unknown partition shape {shape!r}; known: {PARTITION_SHAPES}")
    members = list(member_ids)
    rng.shuffle(members)
    if shape == "isolate":
        return (members[:1], members[1:]), None
    if shape == "split":
        cut = rng.randint(1, len(members) // 2)
        return (members[:cut], members[cut:]), None
    bridge, rest = members[0], members[1:]
    cut = rng.randint(1, len(rest) // 2)
    return (rest[:cut], rest[cut:]), bridge
