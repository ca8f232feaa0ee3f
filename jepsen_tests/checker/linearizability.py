"""Deciding whether a history is linearizable.

Theory of operation. A history is linearizable when each operation can be
given one instant between its invocation and its completion such that,
taken in the order of those instants, the operations obey the sequential
model (Herlihy and Wing). Indeterminate operations may take their instant
at any time after their invocation, or have none at all.

The search is Wing and Gong's, in the form Lowe gave it ("Testing for
linearizability", 2017) and Porcupine uses: walk the history's events in
time order as a doubly linked list. At a call event, try to linearize that
operation now: if the model accepts it, remove its call and return events
from the list ("lift") and start again from the head. At a return event,
the operation returning there had to be linearized already, so undo the
most recent choice ("unlift") and try the next call after it. Two rules
keep this from exploring the same ground twice:

1. Memoisation: the configuration is the set of linearized operations (an
   integer used as a bitset) and the model state. The subtree below a
   configuration depends on nothing else, so a configuration seen once is
   never explored again.
2. Partitioning: operations on different keys never constrain each other,
   so each key is checked alone and a multi-key history costs the sum of
   its keys, not their product (Horn and Kroening's P-compositionality).

And three more that are ours, each sound for the reason given:

3. Observations are forced moves. If an operation never changes the state
   (a read, a failed cas) and the model accepts it now, any linearization
   that places it later can place it now instead: nothing in between sees
   the difference, and everything that had to precede it already has. So
   when the search backtracks over such a choice it backtracks over the
   choice before it too, and when such a choice leads to a configuration
   already explored (which therefore failed), the current one fails as well.
4. Indeterminate operations have no return event, because no deadline
   binds them. The search ends as soon as every determinate operation is
   linearized: the indeterminate ones left over simply never happened.
5. Indeterminate operations with the same function and argument are
   interchangeable, and the one invoked earlier may go wherever the later
   one can; so the later one is only tried once the earlier one is
   linearized. This removes the factorial of identical timed-out writes.

A search that may blow up has a budget, in seconds or in steps, and a cap
on the configurations it remembers; spending either makes the answer
`unknown`, never a guess.

When the answer is no, the explanation is the deepest point the search
reached: the longest linearizable prefix it found, the state after it, and
the operation whose return came up while it could not be placed.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .history import Event, Operation, operations_from_events
from .models import REJECTED, Model, Transition

# How many search steps run between looks at the clock and the step budget:
# looking costs about as much as a step, so look rarely, but often enough
# that a budget of a tenth of a second is kept to within a few milliseconds.
# A step budget is therefore kept to within this many steps.
steps_between_clock_checks = 2048

# The memo of explored configurations is the search's memory: a few hundred
# bytes each, so this many is about a gigabyte. Past it the answer is
# `unknown`, as when the time runs out: a checker must not take CI down.
explored_configurations_max = 4_000_000


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one key's operations have no linearization."""

    key: Hashable | None
    operation: Operation
    longest_prefix: tuple[Operation, ...]
    state_after_prefix: Any
    state_description: str

    def describe(self) -> str:
        where = "" if self.key is None else f"key {self.key!r}: "
        return (
            f"{where}{self.operation.describe()} cannot be linearized. "
            f"The longest linearizable prefix has {len(self.longest_prefix)} operations; "
            f"after it {self.state_description}."
        )


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict on one key's operations."""

    key: Hashable | None
    verdict: Verdict
    operations: tuple[Operation, ...]
    failure: Failure | None
    steps: int
    seconds: float


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict on a whole history, key by key."""

    verdict: Verdict
    key_results: tuple[KeyResult, ...]
    seconds: float
    failure: Failure | None = None
    unknown_keys: tuple[Hashable | None, ...] = field(default=())

    @property
    def steps(self) -> int:
        return sum(result.steps for result in self.key_results)

    def describe(self) -> str:
        if self.verdict is Verdict.LINEARIZABLE:
            return f"linearizable ({len(self.key_results)} keys, {self.steps} steps, {self.seconds * 1000:.1f} ms)"
        if self.verdict is Verdict.UNKNOWN:
            keys = ", ".join(repr(key) for key in self.unknown_keys)
            where = "" if self.unknown_keys == (None,) else f" on key {keys}"
            return f"unknown: the budget ran out{where} after {self.steps} steps, {self.seconds * 1000:.1f} ms"
        assert self.failure is not None
        return f"not linearizable ({self.steps} steps, {self.seconds * 1000:.1f} ms): " + self.failure.describe()


def check_events(
    events: Iterable[Event],
    model: Model,
    budget_seconds: float | None = None,
    budget_steps: int | None = None,
) -> CheckResult:
    """Pair events into operations, then `check_operations`."""
    return check_operations(operations_from_events(events), model, budget_seconds, budget_steps)


def check_operations(
    operations: Sequence[Operation],
    model: Model,
    budget_seconds: float | None = None,
    budget_steps: int | None = None,
) -> CheckResult:
    """Decide linearizability key by key; stop at the first key that fails.

    The budgets are shared by all keys. A key whose search runs out of
    budget is `unknown`; the history is then unknown unless another key
    fails outright. Every operation is compiled before any search starts,
    so a malformed operation is a `HistoryError` whatever key it is on.
    """
    started = time.perf_counter()
    deadline = None if budget_seconds is None else started + budget_seconds
    steps_left = budget_steps
    operations_by_key: dict[Hashable | None, list[Operation]] = {}
    for operation in operations:
        operations_by_key.setdefault(operation.key, []).append(operation)
    compiled_by_key = {
        key: _compile(model, key_operations) for key, key_operations in operations_by_key.items()
    }
    key_results = []
    unknown_keys = []
    for key, key_operations in operations_by_key.items():
        result = _search_key(key, key_operations, compiled_by_key[key], model, deadline, steps_left)
        key_results.append(result)
        if steps_left is not None:
            steps_left = max(0, steps_left - result.steps)
        if result.verdict is Verdict.NOT_LINEARIZABLE:
            return CheckResult(
                Verdict.NOT_LINEARIZABLE,
                tuple(key_results),
                time.perf_counter() - started,
                failure=result.failure,
            )
        if result.verdict is Verdict.UNKNOWN:
            unknown_keys.append(key)
    verdict = Verdict.UNKNOWN if unknown_keys else Verdict.LINEARIZABLE
    return CheckResult(verdict, tuple(key_results), time.perf_counter() - started, unknown_keys=tuple(unknown_keys))


def check_key(
    key: Hashable | None,
    operations: Sequence[Operation],
    model: Model,
    deadline: float | None = None,
    budget_steps: int | None = None,
) -> KeyResult:
    """Decide whether one key's operations are linearizable."""
    return _search_key(key, operations, _compile(model, operations), model, deadline, budget_steps)


def _compile(model: Model, operations: Sequence[Operation]) -> list[tuple[Operation, Transition]]:
    """The operations that matter to the search, each with its transition."""
    compiled = []
    for operation in model.operations_worth_checking(operations):
        transition = model.transition(operation)
        if transition is not None:
            compiled.append((operation, transition))
    return compiled


def _search_key(
    key: Hashable | None,
    operations: Sequence[Operation],
    compiled: list[tuple[Operation, Transition]],
    model: Model,
    deadline: float | None,
    budget_steps: int | None,
) -> KeyResult:
    started = time.perf_counter()
    search = _Search(model, compiled, deadline, budget_steps)
    verdict = search.run()
    failure = None
    if verdict is Verdict.NOT_LINEARIZABLE:
        failure = search.failure(key)
    return KeyResult(
        key, verdict, tuple(operations), failure, search.steps, time.perf_counter() - started
    )


class _Search:
    """Lowe's just-in-time search over one key's compiled operations.

    Operations are numbered 0..n-1 in the order given. Entries of the event
    list are numbers too: the call of operation i is entry i, its return is
    entry n + i, and two sentinels close the list. `next_entry` and
    `previous_entry` are the links; lifting an operation unlinks its two
    entries, and unlifting relinks them, newest lift first.
    """

    def __init__(
        self,
        model: Model,
        compiled: list[tuple[Operation, Transition]],
        deadline: float | None,
        budget_steps: int | None,
    ) -> None:
        self.model = model
        self.operations = [operation for operation, _transition in compiled]
        self.apply_of_operation = [transition.apply for _operation, transition in compiled]
        self.is_observation = [transition.is_observation for _operation, transition in compiled]
        self.deadline = deadline
        self.budget_steps = budget_steps
        self.steps = 0
        self.deepest_prefix: list[int] = []
        self.deepest_state: Any = model.initial_state()
        self.blocked_operation: int | None = None

    def _build_entry_list(self) -> tuple[list[int], list[int], int]:
        operation_count = len(self.operations)
        timeline = []
        for number, operation in enumerate(self.operations):
            # At equal times calls sort before returns: operations that merely
            # touch are concurrent, which never rejects a correct history.
            timeline.append((operation.invoke_time, 0, number))
            if not operation.is_indeterminate:
                assert operation.completion_time is not None
                timeline.append((operation.completion_time, 1, operation_count + number))
        timeline.sort()
        head = 2 * operation_count
        tail = head + 1
        next_entry = [tail] * (2 * operation_count + 2)
        previous_entry = [head] * (2 * operation_count + 2)
        previous = head
        for _time, _kind, entry in timeline:
            next_entry[previous] = entry
            previous_entry[entry] = previous
            previous = entry
        next_entry[previous] = tail
        previous_entry[tail] = previous
        return next_entry, previous_entry, head

    def _interchangeable_predecessors(self) -> list[int]:
        """For each indeterminate operation, the bit of the earlier one it must follow (rule 5)."""
        predecessor_bit = [0] * len(self.operations)
        latest_of_kind: dict[tuple[str, Any], int] = {}
        by_invocation = sorted(range(len(self.operations)), key=lambda number: self.operations[number].invoke_time)
        for number in by_invocation:
            operation = self.operations[number]
            if not operation.is_indeterminate:
                continue
            kind = (operation.function, operation.argument)
            if kind in latest_of_kind:
                predecessor_bit[number] = 1 << latest_of_kind[kind]
            latest_of_kind[kind] = number
        return predecessor_bit

    def run(self) -> Verdict:
        operations = self.operations
        operation_count = len(operations)
        next_entry, previous_entry, head = self._build_entry_list()
        apply_of_operation = self.apply_of_operation
        is_observation = self.is_observation
        predecessor_bit = self._interchangeable_predecessors()
        bit_of_operation = [1 << number for number in range(operation_count)]
        return_entry_of = [
            None if operation.is_indeterminate else operation_count + number
            for number, operation in enumerate(operations)
        ]
        determinate_count = [0 if operation.is_indeterminate else 1 for operation in operations]
        remaining = sum(determinate_count)

        deadline = self.deadline
        budget_steps = self.budget_steps
        if budget_steps is not None and budget_steps <= 0:
            return Verdict.UNKNOWN
        if deadline is not None and time.perf_counter() > deadline:
            return Verdict.UNKNOWN
        clock_check_mask = steps_between_clock_checks - 1

        state = self.model.initial_state()
        linearized = 0
        explored: set[tuple[int, Any]] = set()
        # Each frame: (operation, state before it, whether it was a forced move).
        stack: list[tuple[int, Any, bool]] = []
        deepest = -1
        steps = 0
        entry = next_entry[head]

        while remaining:
            steps += 1
            if not steps & clock_check_mask:
                if (
                    (deadline is not None and time.perf_counter() > deadline)
                    or (budget_steps is not None and steps > budget_steps)
                    or len(explored) > explored_configurations_max
                ):
                    self.steps = steps
                    return Verdict.UNKNOWN
            if entry < operation_count:
                # A call: try to linearize this operation now.
                required = predecessor_bit[entry]
                if required and not linearized & required:
                    entry = next_entry[entry]
                    continue
                new_state = apply_of_operation[entry](state)
                if new_state is REJECTED:
                    entry = next_entry[entry]
                    continue
                new_linearized = linearized | bit_of_operation[entry]
                configuration = (new_linearized, new_state)
                if configuration not in explored:
                    explored.add(configuration)
                    stack.append((entry, state, is_observation[entry]))
                    state = new_state
                    linearized = new_linearized
                    remaining -= determinate_count[entry]
                    # Lift: unlink the call and, if any, the return.
                    following = next_entry[entry]
                    preceding = previous_entry[entry]
                    next_entry[preceding] = following
                    previous_entry[following] = preceding
                    return_entry = return_entry_of[entry]
                    if return_entry is not None:
                        following = next_entry[return_entry]
                        preceding = previous_entry[return_entry]
                        next_entry[preceding] = following
                        previous_entry[following] = preceding
                    entry = next_entry[head]
                    continue
                if not is_observation[entry]:
                    entry = next_entry[entry]
                    continue
                # A forced move into explored ground: this configuration fails
                # too (rule 3), so fall through and backtrack.
            else:
                # A return: its operation should have been linearized by now.
                if len(stack) > deepest:
                    deepest = len(stack)
                    self.deepest_prefix = [frame[0] for frame in stack]
                    self.deepest_state = state
                    self.blocked_operation = entry - operation_count
            # Backtrack: undo choices until one that was not forced is undone.
            while True:
                if not stack:
                    self.steps = steps
                    return Verdict.NOT_LINEARIZABLE
                entry, state, forced = stack.pop()
                linearized ^= bit_of_operation[entry]
                remaining += determinate_count[entry]
                # Unlift: relink the return first, then the call.
                return_entry = return_entry_of[entry]
                if return_entry is not None:
                    next_entry[previous_entry[return_entry]] = return_entry
                    previous_entry[next_entry[return_entry]] = return_entry
                next_entry[previous_entry[entry]] = entry
                previous_entry[next_entry[entry]] = entry
                if not forced:
                    break
            entry = next_entry[entry]
        self.steps = steps
        return Verdict.LINEARIZABLE

    def failure(self, key: Hashable | None) -> Failure:
        assert self.blocked_operation is not None, "a failed search always meets a return it cannot pass"
        return Failure(
            key=key,
            operation=self.operations[self.blocked_operation],
            longest_prefix=tuple(self.operations[number] for number in self.deepest_prefix),
            state_after_prefix=self.deepest_state,
            state_description=self.model.describe_state(self.deepest_state),
        )
