"""Sequential specifications: what one key does when operations run one at a time.

Theory of operation. A model is a state machine for a single key. For every
operation of a history it compiles a `Transition`: a function from the
state before the operation to the state after it, or `REJECTED` when the
operation's recorded result is impossible in that state. States are
immutable and hashable, because the search remembers the (operations done,
state) pairs it has already explored.

What each completion type means to a model (see history.py):

- `ok`: the operation happened and its result must match the state;
- `fail`: the operation did not happen. If it changes nothing it is dropped
  (a failed write, a failed or timed-out read); a failed compare-and-set is
  kept as the read it is: it saw a value other than the one it expected;
- `info` (or never completed): the effect may happen or not, with any
  result. A read of unknown result says nothing and is dropped; a write or
  an append keeps its effect; a compare-and-set takes effect if the value
  matches and does nothing otherwise. "Never" is the search's business: it
  may leave an indeterminate operation out altogether.

A transition that can never change the state (a read, a failed
compare-and-set) is an *observation*: the search may place one as soon as
it fits, without ever having to try it later (see linearizability.py).

The models:

- `register`: read, write, cas `[expected, new]`; starts as null.
- `kv`: get, put, append (string concatenation); every key starts as the
  empty string, and a get that returns null read the empty string.
- `table-append`: append an entry; read returns every entry in order;
  sync with argument `since` (entries the caller already holds, null for 0)
  returns the entries after them. Each acknowledged append then appears
  exactly once, all readers agree on one order, and every read or sync
  result is a prefix of that order.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from .history import HistoryError, Operation


class _Rejected:
    """The state a transition returns when the recorded result is impossible."""

    def __repr__(self) -> str:
        return "REJECTED"


REJECTED: Any = _Rejected()

State = Hashable
TransitionFunction = Callable[[State], State]


@dataclass(frozen=True, slots=True)
class Transition:
    """What one operation does to the state of its key."""

    apply: TransitionFunction
    is_observation: bool


class Model:
    """Base class: a named sequential specification for one key."""

    name = "model"
    functions: tuple[str, ...] = ()

    def initial_state(self) -> State:
        raise NotImplementedError

    def transition(self, operation: Operation) -> Transition | None:
        """Compile an operation; None when it neither constrains nor changes anything."""
        if operation.function not in self.functions:
            raise HistoryError(
                f"{operation.describe()}: the {self.name} model has no operation "
                f"{operation.function!r} (it has {', '.join(self.functions)})"
            )
        if operation.status == "fail":
            return self._failed_transition(operation)
        return self._transition(operation)

    def _transition(self, operation: Operation) -> Transition | None:
        raise NotImplementedError

    def operations_worth_checking(self, operations: Sequence[Operation]) -> list[Operation]:
        """One key's operations less any that provably cannot change the verdict."""
        return list(operations)

    def _failed_transition(self, operation: Operation) -> Transition | None:
        return None

    def describe_state(self, state: State) -> str:
        raise NotImplementedError


def _observation(expected: Any) -> Transition:
    def observe(state: State) -> State:
        return state if state == expected else REJECTED

    return Transition(observe, is_observation=True)


def _overwrite(new_state: State) -> Transition:
    def overwrite(state: State) -> State:
        return new_state

    return Transition(overwrite, is_observation=False)


def _pair_argument(operation: Operation) -> tuple[Any, Any]:
    argument = operation.argument
    if not isinstance(argument, tuple) or len(argument) != 2:
        raise HistoryError(f"{operation.describe()}: a cas argument must be [expected, new]")
    return argument[0], argument[1]


class RegisterModel(Model):
    """A single value with read, write and compare-and-set."""

    name = "register"
    functions = ("read", "write", "cas")

    def initial_state(self) -> State:
        return None

    def _transition(self, operation: Operation) -> Transition | None:
        function = operation.function
        if function == "read":
            return _observation(operation.result) if operation.status == "ok" else None
        if function == "write":
            return _overwrite(operation.argument)
        expected, new = _pair_argument(operation)
        if operation.status == "ok":

            def swap(state: State) -> State:
                return new if state == expected else REJECTED

            return Transition(swap, is_observation=False)

        def maybe_swap(state: State) -> State:
            return new if state == expected else state

        return Transition(maybe_swap, is_observation=False)

    def _failed_transition(self, operation: Operation) -> Transition | None:
        if operation.function != "cas":
            return None
        expected, _new = _pair_argument(operation)

        def saw_other_value(state: State) -> State:
            return state if state != expected else REJECTED

        return Transition(saw_other_value, is_observation=True)

    def describe_state(self, state: State) -> str:
        return f"the register holds {state!r}"


def _string_argument(operation: Operation) -> str:
    if not isinstance(operation.argument, str):
        raise HistoryError(f"{operation.describe()}: the argument of {operation.function} must be a string")
    return operation.argument


class KeyValueModel(Model):
    """A string per key with get, put and (string) append."""

    name = "kv"
    functions = ("get", "put", "append")

    def initial_state(self) -> State:
        return ""

    def _transition(self, operation: Operation) -> Transition | None:
        function = operation.function
        if function == "get":
            if operation.status != "ok":
                return None
            result = "" if operation.result is None else operation.result
            return _observation(result)
        suffix = _string_argument(operation)
        if function == "put":
            return _overwrite(suffix)

        def append(state: State) -> State:
            return state + suffix

        return Transition(append, is_observation=False)

    def operations_worth_checking(self, operations: Sequence[Operation]) -> list[Operation]:
        """Leave out indeterminate puts and appends whose string no get ever returned.

        If such a write happened, its string was part of the value from then
        until the next put, so every get in that stretch would have returned
        a value containing it: there was none. Only writes follow it before
        the next put (or the end), appends return nothing, and after that put
        the value is the same either way, so leaving it out changes no
        result. As with table-append's unseen appends, each one left in
        would stay a choice (now, or later?) for the rest of the history.
        """
        results = [
            "" if operation.result is None else operation.result
            for operation in operations
            if operation.function == "get" and operation.status == "ok"
        ]
        return [
            operation
            for operation in operations
            if not (
                operation.is_indeterminate
                and operation.function in ("put", "append")
                and isinstance(operation.argument, str)
                and not any(operation.argument in result for result in results if isinstance(result, str))
            )
        ]

    def describe_state(self, state: State) -> str:
        return f"the value is {state!r}"


class TableAppendModel(Model):
    """An append-only table: one order of entries, read whole or synced from a position."""

    name = "table-append"
    functions = ("append", "read", "sync")

    def initial_state(self) -> State:
        return ()

    def _transition(self, operation: Operation) -> Transition | None:
        function = operation.function
        if function == "append":
            entry = (operation.argument,)

            def append(state: State) -> State:
                return state + entry

            return Transition(append, is_observation=False)
        if operation.status != "ok":
            return None
        entries = () if operation.result is None else operation.result
        if not isinstance(entries, tuple):
            raise HistoryError(f"{operation.describe()}: a {function} returns a list of entries")
        if function == "read":
            return _observation(entries)
        since = 0 if operation.argument is None else operation.argument
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            raise HistoryError(f"{operation.describe()}: a sync takes the number of entries already held")
        length = since + len(entries)

        def sync(state: State) -> State:
            return state if len(state) == length and state[since:] == entries else REJECTED

        return Transition(sync, is_observation=True)

    def operations_worth_checking(self, operations: Sequence[Operation]) -> list[Operation]:
        """Leave out indeterminate appends of entries that no read ever returned.

        Such an append may as well never have happened: if it did, no read
        came after it (a read after it would have returned its entry), so
        everything after it is appends and leaving it out changes no result.
        Without this, every timed-out append nobody saw stays a choice
        (now or later?) for the rest of the history, and the search doubles
        with each one. A sync from a position past 0 hides the entries
        before that position, so with one of those nothing is left out.
        """
        observed_entries: set[Any] = set()
        for operation in operations:
            if operation.function == "append" or operation.status != "ok":
                continue
            if operation.function == "sync" and operation.argument not in (None, 0):
                return list(operations)
            if isinstance(operation.result, tuple):
                observed_entries.update(operation.result)
        return [
            operation
            for operation in operations
            if not (
                operation.is_indeterminate
                and operation.function == "append"
                and operation.argument not in observed_entries
            )
        ]

    def describe_state(self, state: State) -> str:
        shown = ", ".join(repr(entry) for entry in state[-8:])
        if len(state) > 8:
            shown = "..., " + shown
        return f"the table holds {len(state)} entries [{shown}]"
