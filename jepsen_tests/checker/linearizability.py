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
6. A configuration is dominated by an explored one with the same state,
   the same determinate operations linearized and a subset of the
   indeterminate ones: every way to finish from the larger set is a way to
   finish from the smaller (the extra indeterminate operations have no
   deadline, so they never block anything, and leaving them out is
   allowed), so a dominated configuration is never entered. The memo keys
   on (determinate set, state) and keeps, for each, the indeterminate sets
   entered (none a superset of another). Placing an indeterminate
   operation that changes nothing is the simplest case: it is dominated by
   the configuration it was placed in.
7. Keys are searched side by side: each key's search runs in slices of
   `steps_between_clock_checks` steps, round robin, and the first key that
   fails ends the check. A history with one key that fails quickly and
   another that is slow to decide costs about (number of keys) times the
   quick one's steps, not the slow one's.

A search that may blow up has a budget, in seconds or in steps, and a cap
on the configurations remembered by all keys together; spending either
makes the answer `unknown`, never a guess.

When the answer is no, the explanation is the deepest point the search
reached: the longest linearizable prefix it found, the state after it, and
the operation whose return came up while it could not be placed.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Generator, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .history import Event, Operation, operations_from_events
from .models import REJECTED, Model, Transition

# How many search steps one key's search runs before the next key's turn,
# and between looks at the clock and the step budget: looking costs about
# as much as a step, so look rarely, but often enough that a budget of a
# tenth of a second is kept to within a few milliseconds. A step budget is
# therefore kept to within this many steps.
steps_between_clock_checks = 2048

# The memo of explored configurations is the search's memory: a few hundred
# bytes each, so this many (all keys together) is about a gigabyte. Past it
# the key with the largest memo is given up as `unknown`, as when the time
# runs out: a checker must not take CI down.
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
    """Decide linearizability key by key, side by side; stop at the first key that fails.

    The budgets are shared by all keys. A key whose search runs out of
    budget is `unknown`; the history is then unknown unless another key
    fails outright. When a key fails, the keys not yet decided are left
    `unknown` in `key_results`. Every operation is compiled before any
    search starts, so a malformed operation is a `HistoryError` whatever
    key it is on.
    """
    started = time.perf_counter()
    deadline = None if budget_seconds is None else started + budget_seconds
    operations_by_key: dict[Hashable | None, list[Operation]] = {}
    for operation in operations:
        operations_by_key.setdefault(operation.key, []).append(operation)
    searches = [
        _KeySearch(key, key_operations, _Search(model, _compile(model, key_operations)))
        for key, key_operations in operations_by_key.items()
    ]
    failed = _run_side_by_side(searches, deadline, budget_steps)
    key_results = tuple(search.result() for search in searches)
    seconds = time.perf_counter() - started
    if failed is not None:
        return CheckResult(Verdict.NOT_LINEARIZABLE, key_results, seconds, failure=failed.result().failure)
    unknown_keys = tuple(result.key for result in key_results if result.verdict is Verdict.UNKNOWN)
    verdict = Verdict.UNKNOWN if unknown_keys else Verdict.LINEARIZABLE
    return CheckResult(verdict, key_results, seconds, unknown_keys=unknown_keys)


def check_key(
    key: Hashable | None,
    operations: Sequence[Operation],
    model: Model,
    deadline: float | None = None,
    budget_steps: int | None = None,
) -> KeyResult:
    """Decide whether one key's operations are linearizable."""
    search = _KeySearch(key, operations, _Search(model, _compile(model, operations)))
    _run_side_by_side([search], deadline, budget_steps)
    return search.result()


def _compile(model: Model, operations: Sequence[Operation]) -> list[tuple[Operation, Transition]]:
    """The operations that matter to the search, each with its transition."""
    compiled = []
    for operation in model.operations_worth_checking(operations):
        transition = model.transition(operation)
        if transition is not None:
            compiled.append((operation, transition))
    return compiled


class _KeySearch:
    """One key's search as the scheduler sees it: advanced a slice at a time."""

    def __init__(self, key: Hashable | None, operations: Sequence[Operation], search: _Search) -> None:
        self.key = key
        self.operations = tuple(operations)
        self.search = search
        self.slices = search.slices()
        self.verdict: Verdict | None = None
        self.seconds = 0.0

    def advance(self) -> Verdict | None:
        """Run one slice; the verdict once the search has one."""
        started = time.perf_counter()
        try:
            next(self.slices)
        except StopIteration as stop:
            self.verdict = stop.value
        self.seconds += time.perf_counter() - started
        return self.verdict

    def give_up(self) -> None:
        """Stop undecided: the answer for this key is `unknown`, and its memo is freed."""
        self.verdict = Verdict.UNKNOWN
        self.slices.close()

    def result(self) -> KeyResult:
        verdict = Verdict.UNKNOWN if self.verdict is None else self.verdict
        failure = self.search.failure(self.key) if verdict is Verdict.NOT_LINEARIZABLE else None
        return KeyResult(self.key, verdict, self.operations, failure, self.search.steps, self.seconds)


def _run_side_by_side(
    searches: list[_KeySearch], deadline: float | None, budget_steps: int | None
) -> _KeySearch | None:
    """Advance the searches round robin until one fails or all are decided (rule 7).

    Returns the search that failed, if one did. Between slices the shared
    budgets are checked: when the time or the steps run out, every
    undecided key is given up; when the memos together hold more than
    `explored_configurations_max` configurations, the largest is.
    """
    undecided = deque(searches)
    steps_spent = 0
    remembered = 0  # configurations in the memos of the undecided searches
    while undecided:
        out_of_time = deadline is not None and time.perf_counter() > deadline
        out_of_steps = budget_steps is not None and steps_spent >= budget_steps
        if out_of_time or out_of_steps:
            for search in undecided:
                search.give_up()
            return None
        key_search = undecided.popleft()
        steps_before = key_search.search.steps
        remembered -= key_search.search.explored_size
        verdict = key_search.advance()
        steps_spent += key_search.search.steps - steps_before
        if verdict is Verdict.NOT_LINEARIZABLE:
            for search in undecided:
                search.slices.close()
            return key_search
        if verdict is None:
            undecided.append(key_search)
            remembered += key_search.search.explored_size
            if remembered > explored_configurations_max:
                largest = max(undecided, key=lambda search: search.search.explored_size)
                remembered -= largest.search.explored_size
                largest.give_up()
                undecided.remove(largest)
    return None


class _Search:
    """Lowe's just-in-time search over one key's compiled operations.

    Operations are numbered 0..n-1 in the order given. Entries of the event
    list are numbers too: the call of operation i is entry i, its return is
    entry n + i, and two sentinels close the list. `next_entry` and
    `previous_entry` are the links; lifting an operation unlinks its two
    entries, and unlifting relinks them, newest lift first.
    """

    def __init__(self, model: Model, compiled: list[tuple[Operation, Transition]]) -> None:
        self.model = model
        self.operations = [operation for operation, _transition in compiled]
        self.apply_of_operation = [transition.apply for _operation, transition in compiled]
        self.is_observation = [transition.is_observation for _operation, transition in compiled]
        self.steps = 0
        # Configurations remembered, as of the end of the last slice.
        self.explored_size = 0
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
        """The whole search at once, without budgets."""
        slices = self.slices()
        while True:
            try:
                next(slices)
            except StopIteration as stop:
                return stop.value

    def slices(self) -> Generator[None, None, Verdict]:
        """The search, pausing every `steps_between_clock_checks` steps; returns the verdict."""
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

        slice_mask = steps_between_clock_checks - 1

        state = self.model.initial_state()
        linearized = 0
        # Rule 6. Without indeterminate operations no configuration dominates
        # another, and the memo is a plain set of (linearized, state).
        indeterminate_mask = sum(
            bit for bit, operation in zip(bit_of_operation, operations, strict=True) if operation.is_indeterminate
        )
        explored_plain: set[tuple[int, Any]] = set()
        explored_by_core: dict[tuple[int, Any], list[int]] = {}
        if indeterminate_mask:
            explored_by_core[(0, state)] = [0]
        else:
            explored_plain.add((0, state))
        entered = 1
        # Each frame: (operation, state before it, whether it was a forced move).
        stack: list[tuple[int, Any, bool]] = []
        deepest = -1
        steps = 0
        entry = next_entry[head]

        while remaining:
            steps += 1
            if not steps & slice_mask:
                self.steps = steps
                self.explored_size = entered
                yield
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
                if indeterminate_mask:
                    placed_indeterminate = new_linearized & indeterminate_mask
                    core = (new_linearized ^ placed_indeterminate, new_state)
                    entered_before = explored_by_core.get(core)
                    if entered_before is None:
                        explored_by_core[core] = [placed_indeterminate]
                        fresh = True
                    else:
                        for earlier in entered_before:
                            if earlier & placed_indeterminate == earlier:
                                fresh = False  # dominated by `earlier`, or equal to it
                                break
                        else:
                            fresh = True
                            # Keep the sets of this core an antichain: drop those the new one dominates.
                            entered_before[:] = [
                                earlier
                                for earlier in entered_before
                                if earlier & placed_indeterminate != placed_indeterminate
                            ]
                            entered_before.append(placed_indeterminate)
                else:
                    configuration = (new_linearized, new_state)
                    fresh = configuration not in explored_plain
                    if fresh:
                        explored_plain.add(configuration)
                if fresh:
                    entered += 1
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
                # A forced move into explored or dominated ground: this
                # configuration fails too (rule 3), so fall through and backtrack.
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
                    self.explored_size = entered
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
        self.explored_size = entered
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
