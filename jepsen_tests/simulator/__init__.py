"""The deterministic simulator: a replica group in one process, replayable from a seed.

Theory of operation. Every replica is the real sans-IO core over an
in-memory storage that can lose its unsynced writes. The simulator owns
everything a real deployment leaves to chance, and draws all of it from one
seeded `random.Random`, so a failing run replays exactly from its seed:

    clock.py         the global tick and the one sequence that orders a tick's events
    faults.py        every fault's rate and range (`Faults`), partition shapes
    network.py       delays per channel, drops, duplicates, reordering, partitions
    workload.py      the clients, their requests and routing, the history they record
    oracle.py        the protocol's invariants, checked after every step and message
    simulation.py    the nodes, crashes, group commit, the run and its final checks
    planted_bugs.py  one broken rule at a time, to prove each check can fire
    __main__.py      `python -m jepsen_tests.simulator`

A run's history is checked by the linearizability checker against the
versioned models of its registry (`versioned-register`,
`versioned-table-append`). docs/replication.md explains what a run covers,
the planted-bug table and the long runs.
"""

from .faults import Faults
from .oracle import InvariantViolation, Oracle
from .planted_bugs import PLANTED_BUGS, first_failure_with, print_planted_bugs
from .simulation import RunResult, Simulation, replay_command
from .workload import WORKLOAD_MODELS, Workload

__all__ = [
    "PLANTED_BUGS",
    "WORKLOAD_MODELS",
    "Faults",
    "InvariantViolation",
    "Oracle",
    "RunResult",
    "Simulation",
    "Workload",
    "first_failure_with",
    "print_planted_bugs",
    "replay_command",
]
