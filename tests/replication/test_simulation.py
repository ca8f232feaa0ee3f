"""The deterministic simulator over many seeds, and proof that it can fail.

Each run is a replica group under drops, duplicates, delays, partitions,
crashes that lose unsynced writes, and trimmed logs; it ends by healing
and checking linearizability, that no acknowledged write was lost, and
that the replicas converged. A failing seed is named with its replay
command. The planted-bug tests switch off one safety rule at a time and
require the simulator to find a violation within a small seed budget.
"""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from jepsen_tests.simulator import (
    PLANTED_BUGS,
    Simulation,
    Workload,
    first_failure_with,
    replay_command,
)
from kvsvr.replication.messages import Accept
from kvsvr.replication.replica import ReplicaOptions

# Seeds per CI run: a few minutes in all on two cores. The long run in
# docs/replication.md covers far more.
REGISTER_SEEDS = range(0, 320)
FIVE_MEMBER_SEEDS = range(1000, 1060)
TABLE_APPEND_SEEDS = range(2000, 2100)
# A planted bug must show within this many seeds.
PLANTED_BUG_SEED_BUDGET = 12


def failures(seeds, **settings) -> list[str]:
    found = []
    for seed in seeds:
        result = Simulation(seed, **settings).run()
        if not result.passed:
            command = replay_command(seed, settings.get("members", 3), settings.get("workload"))
            found.append(f"seed {seed}: {'; '.join(result.problems)}\n  replay: {command}")
    return found


@pytest.mark.parametrize("block", range(8))
def test_register_seeds_pass(block):
    seeds = REGISTER_SEEDS[block::8]
    assert failures(seeds) == []


def test_five_member_seeds_pass():
    assert failures(FIVE_MEMBER_SEEDS, members=5) == []


def test_table_append_seeds_pass():
    assert failures(TABLE_APPEND_SEEDS, workload=Workload(model="table-append")) == []


def test_a_seed_replays_exactly():
    first = Simulation(7).run()
    again = Simulation(7).run()
    assert (first.ticks, first.operations, first.ok, first.counters) == (
        again.ticks,
        again.operations,
        again.ok,
        again.counters,
    )
    assert first.counters["crashes"] > 0  # the run did meet faults


@pytest.mark.parametrize(("bug", "rule", "members", "found"), PLANTED_BUGS,
                         ids=[bug for bug, *_ in PLANTED_BUGS])
def test_planted_bug_is_caught(bug, rule, members, found):
    """Each switch breaks one rule; the simulator alone (its oracle, its
    history check, its liveness and convergence checks) must find it within
    the seed budget, and say which guarantee broke."""
    failure = first_failure_with(bug, members, PLANTED_BUG_SEED_BUDGET)
    assert failure is not None, f"{bug} ({rule}): no violation in {PLANTED_BUG_SEED_BUDGET} seeds"
    assert found in failure.problems[0], failure.problems


def test_every_planted_bug_is_in_the_table():
    switches = {field.name for field in dataclasses.fields(ReplicaOptions)
                if field.name.startswith("bug_")}
    assert switches == {bug for bug, *_ in PLANTED_BUGS}


class _SimulationWithABadPeer(Simulation):
    """One replica's first Accept leaves with a ballot that is not a ballot."""

    corrupted = False

    def _send(self, source, destination, message):
        if isinstance(message, Accept) and source != destination and not self.corrupted:
            self.corrupted = True
            message = msgspec.structs.replace(message, ballot=None)
        super()._send(source, destination, message)


def test_a_message_its_peer_refuses_is_a_violation():
    result = _SimulationWithABadPeer(0).run()
    assert not result.passed
    assert "as bad input" in result.problems[0], result.problems


def _table_history(*events):
    from jepsen_tests.checker import Event

    return [Event(process, kind, function, "t", value, time) for time, (process, kind, function, value)
            in enumerate(events)]


def test_unseen_indeterminate_append_counts_for_a_conditional_append_without_a_final_read():
    """A timed-out append nobody saw may still explain the version a failed
    append-if-version reports: it is kept when no read came after."""
    from jepsen_tests.checker import Verdict, check_events, model_named

    history = _table_history(
        (1, "invoke", "append", "a"),
        (2, "invoke", "append-if-version", [0, "b"]),
        (2, "fail", "append-if-version", 1),  # saw version 1: "a" took effect
    )
    result = check_events(history, model_named("versioned-table-append"))
    assert result.verdict is Verdict.LINEARIZABLE


def test_unseen_indeterminate_append_is_left_out_after_a_final_read():
    """With a whole-table read after every determinate append, an append it
    does not show never took effect before them: the same failed conditional
    append is now caught, and quickly."""
    from jepsen_tests.checker import Verdict, check_events, model_named

    history = _table_history(
        (1, "invoke", "append", "a"),
        (2, "invoke", "append-if-version", [0, "b"]),
        (2, "fail", "append-if-version", 1),
        (3, "invoke", "read", None),
        (3, "ok", "read", []),
    )
    result = check_events(history, model_named("versioned-table-append"))
    assert result.verdict is Verdict.NOT_LINEARIZABLE
