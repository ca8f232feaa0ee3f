"""Planted bugs: proof that the simulator sees each rule of the protocol broken.

Theory of operation. A check that never fails proves nothing. Each entry of
`PLANTED_BUGS` switches on one realistic one-line mistake in the replica
(a `ReplicaOptions.bug_*` flag: a promise not synced before it is sent, a
read that skips its quorum, ...) that breaks one rule of
docs/protocol-rules.md; the simulator must then fail a run within a small
seed budget, and its first problem must name the check expected to fire.
`python -m jepsen_tests.simulator --planted-bugs --seeds 12` prints the
table of docs/replication.md.
"""

from __future__ import annotations

import dataclasses

from kvsvr.replication.replica import ReplicaOptions

from .simulation import RunResult, Simulation

# Every rule of docs/protocol-rules.md broken by a realistic one-line mistake
# (ReplicaOptions.bug_*), the group size it is run with, and what the first
# problem the simulator reports must say. R6 is a liveness rule: three
# coordinators duelling on three members still get through without backoff,
# five do not.
PLANTED_BUGS = [
    ("bug_incarnation_not_raised", "R1", 3, "log position"),
    ("bug_promise_inferred_after_restart", "R2", 3, "two refs"),
    ("bug_delete_forgets_version", "R3", 3, "did not converge"),
    ("bug_parked_accept_not_rechecked", "R4", 3, "two instances chosen"),
    ("bug_accepted_counted_by_ballot", "R5", 3, "with the votes of"),
    ("bug_no_backoff", "R6", 5, "liveness:"),
    ("bug_condition_failed_unconfirmed", "R7", 3, "not linearizable"),
    ("bug_round_given_up_keeps_promise", "R8", 3, "two refs"),
    ("bug_rejected_writes_requeued", "R9", 3, "not linearizable"),
    ("bug_read_not_waiting_apply", "R10", 3, "not linearizable"),
    ("bug_vote_payload_unpinned", "R11", 3, "did not converge"),
    ("bug_state_transfer_resets_acceptor", "R12", 3, "a promise it revealed was forgotten"),
    ("bug_apply_past_a_gap", "invariant 4", 3, "replicas differ"),
    ("bug_promise_not_synced", "replies after sync", 3, "a promise it revealed was forgotten"),
    ("bug_skip_promise_check", "Accept below the promise", 3, "two instances chosen"),
    ("bug_reply_before_sync", "replies after sync", 3, "it revealed was forgotten"),
    ("bug_vote_sent_early", "only requests leave early", 3, "it revealed was forgotten"),
    ("bug_vote_lazily_durable", "only knowledge is lazily durable", 3, "it revealed was forgotten"),
    ("bug_read_without_quorum", "linearizable reads", 3, "not linearizable"),
]


def first_failure_with(bug: str, members: int, seeds: int) -> RunResult | None:
    """The first of seeds 0..seeds-1 whose run fails with the planted `bug` on."""
    options = dataclasses.replace(ReplicaOptions(), **{bug: True})
    for seed in range(seeds):
        result = Simulation(seed, members=members, options=options).run()
        if not result.passed:
            return result
    return None


def print_planted_bugs(seeds: int) -> int:
    """Run every planted bug; print the seeds each took and the check that fired."""
    missed = 0
    print("| bug | rule | members | seeds | check that fired |")
    print("|---|---|---|---|---|")
    for bug, rule, members, _found in PLANTED_BUGS:
        result = first_failure_with(bug, members, seeds)
        if result is None:
            missed += 1
            print(f"| `{bug}` | {rule} | {members} | not caught in {seeds} | |", flush=True)
            continue
        problem = result.problems[0]
        shown = problem if len(problem) <= 110 else problem[:107] + "..."
        print(f"| `{bug}` | {rule} | {members} | {result.seed + 1} | {shown} |", flush=True)
    return 1 if missed else 0
