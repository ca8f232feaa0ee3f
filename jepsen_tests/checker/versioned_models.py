"""The simulator's sequential specifications: a key of the store, versions and all.

Theory of operation. The plain models (models.py) know values only. A
replica group also answers with *versions*: every change of a key moves its
version up by exactly one, a compare-and-set may be conditioned on the
version, and a failed condition reports the version it was checked at.
These models check those numbers too, so an acknowledged write that landed
at the wrong version, or a failed condition that saw a version no
linearization reaches, makes a history wrong:

- `versioned-register`: a Key-Value key, (version, value or None);
- `versioned-table-append`: a Key-Table key whose only change is an append
  (so its version is its number of entries), plus append-if-version.

The simulator (jepsen_tests/simulator/) checks the history of its workload
"register" against `versioned-register`, and so on; both are in the
registry (registry.py) with the plain models.
"""

from __future__ import annotations

from collections.abc import Sequence

from .history import HistoryError, Operation
from .models import REJECTED, Model, State, TableAppendModel, Transition


class VersionedRegisterModel(Model):
    """A Key-Value key as the store defines it: (version, value), every change +1.

    read -> (version, value or None); write v / delete -> the new version;
    cas [expected value, new] and cas-version [expected version, new] ->
    the new version, or fail with the version the condition was checked at.
    Versions make this stricter than a plain register: an acknowledged write
    must land exactly one version after the state it follows.
    """

    name = "versioned-register"
    functions = ("read", "write", "delete", "cas", "cas-version")

    def initial_state(self) -> State:
        return (0, None)

    def _transition(self, operation: Operation) -> Transition | None:
        function, argument, result = operation.function, operation.argument, operation.result
        known = operation.status == "ok"
        if function == "read":
            if not known:
                return None
            expected = tuple(result)

            def observe(state: State) -> State:
                return state if state == expected else REJECTED

            return Transition(observe, is_observation=True)
        if function in ("write", "delete"):
            new_value = argument if function == "write" else None

            def change(state: State) -> State:
                version = state[0] + 1
                if known and result != version:
                    return REJECTED
                return (version, new_value)

            return Transition(change, is_observation=False)
        expected, new_value = _pair(operation)
        index = 1 if function == "cas" else 0

        def compare_and_set(state: State) -> State:
            if state[index] != expected:
                return REJECTED if known else state
            version = state[0] + 1
            if known and result != version:
                return REJECTED
            return (version, new_value)

        return Transition(compare_and_set, is_observation=False)

    def _failed_transition(self, operation: Operation) -> Transition | None:
        if operation.function not in ("cas", "cas-version"):
            return None
        expected, _new_value = _pair(operation)
        index = 1 if operation.function == "cas" else 0
        checked_version = operation.result

        def saw_otherwise(state: State) -> State:
            if state[index] == expected or state[0] != checked_version:
                return REJECTED
            return state

        return Transition(saw_otherwise, is_observation=True)

    def describe_state(self, state: State) -> str:
        return f"version {state[0]} holding {state[1]!r}"


class VersionedTableAppendModel(TableAppendModel):
    """Table-append, plus append-if-version: an append only on a table whose
    version (its number of entries: appends are its only change) is the one
    expected; failing, it reports the version it saw."""

    name = "versioned-table-append"
    functions = ("append", "append-if-version", "read", "sync")

    def _transition(self, operation: Operation) -> Transition | None:
        if operation.function != "append-if-version":
            return super()._transition(operation)
        expected_version, entry = _pair(operation)
        known = operation.status == "ok"

        def append_if(state: State) -> State:
            if len(state) != expected_version:
                return REJECTED if known else state
            return state + (entry,)

        return Transition(append_if, is_observation=False)

    def _failed_transition(self, operation: Operation) -> Transition | None:
        if operation.function != "append-if-version":
            return None
        expected_version, _entry = _pair(operation)
        seen_version = operation.result

        def saw_otherwise(state: State) -> State:
            ok = len(state) != expected_version and len(state) == seen_version
            return state if ok else REJECTED

        return Transition(saw_otherwise, is_observation=True)

    def operations_worth_checking(self, operations: Sequence[Operation]) -> list[Operation]:
        """Leave out indeterminate appends whose entry no read returned, when
        a whole-table read began after every determinate append ended.

        An unseen append still moves the version that a failed
        append-if-version reports, so the plain rule (the parent's) does not
        hold here. With such a final read it does: had the append taken
        effect, it comes after that read (which lacks its entry), where only
        other indeterminate operations can follow, and none of them has a
        result to check. Without a final read, nothing is left out.
        """
        if not any(operation.function == "append-if-version" for operation in operations):
            return super().operations_worth_checking(operations)
        appends = ("append", "append-if-version")
        last_append_ended = max(
            (
                operation.completion_time
                for operation in operations
                if operation.function in appends and not operation.is_indeterminate
            ),
            default=-1,
        )
        observed_entries: set = set()
        final_read = False
        for operation in operations:
            if operation.function in appends or operation.status != "ok":
                continue
            if operation.function == "sync" and operation.argument not in (None, 0):
                return list(operations)
            if isinstance(operation.result, tuple):
                observed_entries.update(operation.result)
            final_read = final_read or operation.invoke_time > last_append_ended
        if not final_read:
            return list(operations)

        def entry(operation: Operation):
            return operation.argument if operation.function == "append" else _pair(operation)[1]

        return [
            operation
            for operation in operations
            if not (
                operation.is_indeterminate
                and operation.function in appends
                and entry(operation) not in observed_entries
            )
        ]


def _pair(operation: Operation) -> tuple:
    argument = operation.argument
    if not isinstance(argument, tuple) or len(argument) != 2:
        raise HistoryError(f"{operation.describe()}: the argument must be [expected, new]")
    return argument[0], argument[1]
