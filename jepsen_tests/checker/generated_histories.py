"""Large kv histories whose verdict is known by construction, for measuring the checker.

Theory of operation. A history is built by running clients against the
`kv` model (a string per key, get, put, append) in simulated time. Each
client runs one operation at a time: it invokes, the operation takes effect
at one instant strictly between invocation and completion, and it
completes. The effects are applied to the model in the order of those
instants, so every result is what a sequential execution gave: the history
is linearizable by construction, whatever the overlaps. An indeterminate
operation (completion `info`, chosen at random with `indeterminate_share`)
took effect or not, by a coin toss, and a get of unknown result says
nothing.

Every put and append writes a token that appears nowhere else,
`x CLIENT N y`, so a value names the operations behind it: the last put's
token (or none, for the initial empty string) and then the appends since,
in the order they took effect. That makes an anomaly certain by
construction. Exactly one acknowledged get on one key has its result
altered, in one of three ways:

- `reordered-appends`: two adjacent appended tokens A then B are swapped,
  where A's append completed before B's was invoked. A value with B's token
  before A's needs B to take effect before A, which real time forbids.
- `lost-append`: an appended token A followed by a token Y is removed,
  where A's append was acknowledged before Y's operation was invoked, and
  the value's first token is an append's or a put's that completed before
  A was invoked. A took effect before Y, hence before the get, and after
  the last reset the value shows, so its token must be in the value.
- `phantom-token`: a token nobody wrote is appended to the result; no
  state ever holds it.

Keys other than the altered one stay linearizable. The history is written
in the Jepsen EDN format of the reference kv histories (`jepsen-edn`),
one event a line, the line order being the time.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .history import Event

ANOMALIES = ("reordered-appends", "lost-append", "phantom-token")

# The share of operations of each function (the rest are appends).
get_share = 0.5
put_share = 0.1


@dataclass(frozen=True, slots=True)
class GeneratedHistory:
    """A generated history, what its verdict must be, and where the anomaly is."""

    events: tuple[Event, ...]
    linearizable: bool
    anomaly: str | None
    anomalous_key: str | None
    description: str


@dataclass(slots=True)
class _PlannedOperation:
    process: int
    function: str
    key: str
    argument: str | None
    invoke_time: int
    effect_time: int
    completion_time: int
    indeterminate: bool
    takes_effect: bool
    result: str | None = None


def generate_kv_history(
    seed: int,
    clients: int = 50,
    operations: int = 2000,
    keys: int = 10,
    anomaly: str | None = None,
    indeterminate_share: float = 0.0,
) -> GeneratedHistory:
    """A history of `operations` operations by `clients` clients on `keys` keys.

    With `anomaly` None it is linearizable; with one of `ANOMALIES` it is
    not, and the anomaly is on one key, named in the result. A ValueError
    says what is wrong with the parameters, or that no get in the history
    offers the anomaly (a larger history will).
    """
    if clients < 1 or operations < 1 or keys < 1:
        raise ValueError("clients, operations and keys must each be at least 1")
    if anomaly is not None and anomaly not in ANOMALIES:
        raise ValueError(f"unknown anomaly {anomaly!r}; known: {', '.join(ANOMALIES)}")
    if not 0.0 <= indeterminate_share <= 1.0:
        raise ValueError("indeterminate_share must be between 0 and 1")
    rng = random.Random(seed)
    planned = _plan_operations(rng, clients, operations, keys, indeterminate_share)
    _apply_in_effect_order(planned)
    description = f"kv, {clients} clients, {operations} operations, {keys} keys, seed {seed}"
    anomalous_key = None
    if anomaly is not None:
        anomalous_key, what = _plant_anomaly(rng, planned, anomaly)
        description += f", {anomaly}: {what}"
    else:
        description += ", linearizable"
    return GeneratedHistory(
        tuple(_events_in_time_order(planned)), anomaly is None, anomaly, anomalous_key, description
    )


def _plan_operations(
    rng: random.Random, clients: int, operations: int, keys: int, indeterminate_share: float
) -> list[_PlannedOperation]:
    """Each client's operations back to back, with random durations and gaps.

    Times are distinct integers (a client's next invocation comes after its
    last completion), so the line order of the written history keeps them.
    """
    planned = []
    # (time the client is free, client, its operations so far)
    free_at = [(rng.randrange(10), client, 0) for client in range(clients)]
    heapq.heapify(free_at)
    while len(planned) < operations:
        time_free, client, count = heapq.heappop(free_at)
        invoke_time = time_free + 1 + rng.randrange(20)
        effect_time = invoke_time + 1 + rng.randrange(40)
        completion_time = effect_time + 1 + rng.randrange(40)
        roll = rng.random()
        function = "get" if roll < get_share else "put" if roll < get_share + put_share else "append"
        argument = None if function == "get" else f"x {client} {count} y"
        indeterminate = rng.random() < indeterminate_share
        planned.append(
            _PlannedOperation(
                process=client,
                function=function,
                key=str(rng.randrange(keys)),
                argument=argument,
                invoke_time=invoke_time,
                effect_time=effect_time,
                completion_time=completion_time,
                indeterminate=indeterminate,
                takes_effect=not indeterminate or rng.random() < 0.5,
            )
        )
        heapq.heappush(free_at, (completion_time, client, count + 1))
    # Make every time distinct, keeping their order: scale, then break ties.
    stamps = sorted(
        {(time, operation_number, part)
         for operation_number, operation in enumerate(planned)
         for part, time in enumerate((operation.invoke_time, operation.effect_time, operation.completion_time))}
    )
    distinct = {(operation_number, part): position for position, (_time, operation_number, part) in enumerate(stamps)}
    for operation_number, operation in enumerate(planned):
        operation.invoke_time = distinct[(operation_number, 0)]
        operation.effect_time = distinct[(operation_number, 1)]
        operation.completion_time = distinct[(operation_number, 2)]
    return planned


def _apply_in_effect_order(planned: list[_PlannedOperation]) -> None:
    """Run the kv model at the effect instants; fill in what each get returned."""
    value_of_key: dict[str, str] = {}
    for operation in sorted(planned, key=lambda operation: operation.effect_time):
        if not operation.takes_effect:
            continue
        current = value_of_key.get(operation.key, "")
        if operation.function == "get":
            operation.result = current
        elif operation.function == "put":
            value_of_key[operation.key] = operation.argument or ""
        else:
            value_of_key[operation.key] = current + (operation.argument or "")


def _tokens(value: str) -> list[str]:
    return [token + " y" for token in value.split(" y") if token]


def _plant_anomaly(rng: random.Random, planned: list[_PlannedOperation], anomaly: str) -> tuple[str, str]:
    """Alter one acknowledged get as `anomaly` says; (its key, what was done)."""
    writer_of_token = {operation.argument: operation for operation in planned if operation.argument is not None}
    gets = [operation for operation in planned if operation.function == "get" and not operation.indeterminate]
    # A get from the last quarter, chosen at random, else any: refuting a late
    # anomaly means exploring most of the key first.
    gets.sort(key=lambda operation: -operation.invoke_time)
    late = gets[: max(1, len(gets) // 4)]
    rng.shuffle(late)
    candidates = late + gets[len(late):]
    for get in candidates:
        tokens = _tokens(get.result or "")
        altered = _altered_tokens(tokens, writer_of_token, anomaly, get)
        if altered is not None:
            tokens_after, what = altered
            get.result = "".join(tokens_after)
            return get.key, f"key {get.key!r}, the get of process {get.process} at time {get.invoke_time} {what}"
    raise ValueError(f"no get in this history offers a {anomaly} anomaly; generate a larger one")


def _altered_tokens(
    tokens: list[str], writer_of_token: dict[str, _PlannedOperation], anomaly: str, get: _PlannedOperation
) -> tuple[list[str], str] | None:
    if anomaly == "phantom-token":
        phantom = f"x {-1 - get.process} {get.invoke_time} y"
        return tokens + [phantom], f"returns the token {phantom!r} nobody wrote"
    writers = [writer_of_token[token] for token in tokens]
    if anomaly == "reordered-appends":
        for position in range(1, len(tokens) - 1):
            first, second = writers[position], writers[position + 1]
            if not first.indeterminate and first.completion_time < second.invoke_time:
                swapped = tokens[:position] + [tokens[position + 1], tokens[position]] + tokens[position + 2:]
                return swapped, f"shows {tokens[position + 1]!r} before {tokens[position]!r}"
        return None
    base = writers[0] if writers else None
    for position in range(1, len(tokens) - 1):
        lost, following = writers[position], writers[position + 1]
        if lost.indeterminate or lost.completion_time >= following.invoke_time:
            continue
        base_before_lost = base is not None and (
            base.function == "append" or (not base.indeterminate and base.completion_time < lost.invoke_time)
        )
        if base_before_lost:
            return tokens[:position] + tokens[position + 1:], f"lacks {tokens[position]!r}"
    return None


def _events_in_time_order(planned: Iterable[_PlannedOperation]) -> list[Event]:
    timed = []
    for operation in planned:
        timed.append((operation.invoke_time, Event(
            operation.process, "invoke", operation.function, operation.key, operation.argument, operation.invoke_time
        )))
        if operation.indeterminate:
            completion_type, value = "info", None if operation.function == "get" else operation.argument
        else:
            completion_type = "ok"
            value = operation.result if operation.function == "get" else operation.argument
        timed.append((operation.completion_time, Event(
            operation.process, completion_type, operation.function, operation.key, value, operation.completion_time
        )))
    timed.sort(key=lambda pair: pair[0])
    return [event for _time, event in timed]


def _edn_text(value: str | None) -> str:
    if value is None:
        return "nil"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_jepsen_edn(path: str | Path, events: Iterable[Event]) -> None:
    """Write events as Jepsen EDN maps, one a line (the `jepsen-edn` format)."""
    lines = [
        f"{{:process {event.process}, :type :{event.type}, :f :{event.function}, "
        f":key {_edn_text(event.key)}, :value {_edn_text(event.value)}}}\n"
        for event in events
    ]
    Path(path).write_text("".join(lines), encoding="utf-8")
