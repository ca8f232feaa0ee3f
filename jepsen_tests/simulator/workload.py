"""The simulated clients: what they ask, whom they ask, and the history they record.

Theory of operation. A few client processes work on a few hot keys, one
request at a time each, thinking a drawn number of ticks between requests.
Each request goes to a coordinator picked by a flapping routing rule (the
key's preferred member most of the time, any member otherwise). The
register workload reads, writes, deletes, and compare-and-sets on the value
or on the version; the table-append workload appends (some conditioned on
the table's version) and reads whole tables. Every invocation and its
outcome is recorded as a history event for the linearizability checker: an
answer the store did not give before the client's deadline is recorded as
indeterminate ("info") for a write and as failed for a read.

Operations marked `must_settle` are the liveness oracle's: issued after
every fault has healed, each must get an answer that is not an error of
availability before its deadline.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import zlib
from collections.abc import Callable

from jepsen_tests.checker import Event
from kvsvr.core import model
from kvsvr.core.requests import Get, Sync, Write
from kvsvr.protocol.errors import ConditionFailed, KvError, NotFound

from .clock import Clock

# Each is checked against the checker's model "versioned-<name>".
WORKLOAD_MODELS = ("register", "table-append")


@dataclasses.dataclass(frozen=True)
class Workload:
    # "register": read / write / delete / cas on the value / cas on the
    # version, on Key-Value keys; "table-append": appends (some conditional
    # on the table's version) and whole-table reads on Key-Table keys.
    model: str = "register"
    keys: int = 3
    clients: int = 5
    operations: int = 150
    read_fraction: float = 0.3
    cas_fraction: float = 0.15
    cas_version_fraction: float = 0.1
    delete_fraction: float = 0.07
    conditional_append_fraction: float = 0.2  # of table-append's appends
    preferred_coordinator_probability: float = 0.7
    think_ticks: tuple[int, int] = (0, 6)
    client_deadline_ticks: int = 500
    settle_ticks_max: int = 3000

    def __post_init__(self) -> None:
        if self.model not in WORKLOAD_MODELS:
            raise ValueError(f"unknown workload {self.model!r}; known: {WORKLOAD_MODELS}")

    @property
    def key_names(self) -> list[str]:
        return [f"k{index}" for index in range(self.keys)]


@dataclasses.dataclass
class ClientOperation:
    process: int
    function: str
    key: str
    argument: object
    coordinator: int
    deadline: int
    # Issued after the faults healed: it must settle (the liveness oracle).
    must_settle: bool = False


# (coordinator, request id, request): hands a request to a node.
Submit = Callable[[int, int, object], None]


class Clients:
    def __init__(self, workload: Workload, rng: random.Random, clock: Clock, member_ids,
                 submit: Submit):
        self.workload = workload
        self._rng = rng
        self._clock = clock
        self._member_ids = tuple(member_ids)
        self._submit = submit
        self._next_request_id = 1
        self._in_flight: dict[int, ClientOperation] = {}  # request id -> op
        self._busy: set[int] = set()
        self._ready_at = {process: 0 for process in range(workload.clients)}
        self._written_values: dict[str, list[str]] = collections.defaultdict(list)
        self._versions_seen: dict[str, int] = collections.defaultdict(int)
        self.history: list[Event] = []
        self.operations_started = 0
        self.acknowledged_writes: dict[str, int] = collections.Counter()
        self.unsettled: list[str] = []  # operations after healing that did not settle

    @property
    def workload_done(self) -> bool:
        return self.operations_started >= self.workload.operations and not self._busy

    @property
    def idle(self) -> bool:
        return not self._in_flight

    def any_busy(self, processes) -> bool:
        return bool(self._busy.intersection(processes))

    def start_operations(self) -> None:
        workload = self.workload
        for process in range(workload.clients):
            if process in self._busy or self._ready_at[process] > self._clock.now:
                continue
            if self.operations_started >= workload.operations:
                return
            self.operations_started += 1
            key = f"k{self._rng.randrange(workload.keys)}"
            function, argument = self._choose_operation(key)
            self.issue(process, function, key, argument, self._route(key))

    def issue(self, process: int, function: str, key: str, argument, coordinator: int,
              must_settle: bool = False) -> None:
        request_id = self._next_request_id
        self._next_request_id += 1
        operation = ClientOperation(process, function, key, argument, coordinator,
                                    self._clock.now + self.workload.client_deadline_ticks,
                                    must_settle)
        self._busy.add(process)
        self._in_flight[request_id] = operation
        self._record(process, "invoke", function, key, argument)
        self._submit(coordinator, request_id, self._request(function, key.encode(), argument))

    def on_reply(self, request_id: int, answer) -> None:
        operation = self._in_flight.pop(request_id, None)
        if operation is None:
            return
        self._complete(operation, answer)

    def expire(self) -> None:
        for request_id, operation in list(self._in_flight.items()):
            if operation.deadline <= self._clock.now:
                del self._in_flight[request_id]
                self._busy.discard(operation.process)
                if operation.must_settle:
                    self._did_not_settle(operation, "no answer")
                kind = "fail" if operation.function == "read" else "info"
                self._record(operation.process, kind, operation.function, operation.key,
                             operation.argument)

    # -- what to ask, and whom -------------------------------------------------------

    def _choose_operation(self, key: str) -> tuple[str, object]:
        workload = self.workload
        roll = self._rng.random()
        fresh = f"v{self._clock.last_sequence}"
        if roll < workload.read_fraction:
            return "read", None
        roll -= workload.read_fraction
        if workload.model == "table-append":
            if roll < workload.conditional_append_fraction:
                return "append-if-version", [self._guess_version(key), fresh]
            return "append", fresh
        if roll < workload.cas_fraction:
            candidates = self._written_values[key] or [None]
            return "cas", [self._rng.choice(candidates[-4:] + [None]), fresh]
        roll -= workload.cas_fraction
        if roll < workload.cas_version_fraction:
            return "cas-version", [self._guess_version(key), fresh]
        roll -= workload.cas_version_fraction
        if roll < workload.delete_fraction:
            return "delete", None
        return "write", fresh

    def _guess_version(self, key: str) -> int:
        """A version the key may well be at: the newest one seen, give or take."""
        return max(0, self._versions_seen[key] + self._rng.choice((0, 0, 1, 2, -1)))

    def _route(self, key: str) -> int:
        preferred = self._member_ids[zlib.crc32(key.encode()) % len(self._member_ids)]
        if self._rng.random() < self.workload.preferred_coordinator_probability:
            return preferred
        return self._rng.choice(self._member_ids)

    def _request(self, function: str, key: bytes, argument):
        match function:
            case "write":
                self._written_values[key.decode()].append(argument)
                return Write(key, model.Put(argument.encode()), model.NO_CONDITION)
            case "delete":
                return Write(key, model.Delete(), model.NO_CONDITION)
            case "cas":
                self._written_values[key.decode()].append(argument[1])
                expected = None if argument[0] is None else argument[0].encode()
                return Write(key, model.Put(argument[1].encode()), model.Condition(None, expected))
            case "cas-version":
                self._written_values[key.decode()].append(argument[1])
                return Write(key, model.Put(argument[1].encode()), model.Condition(argument[0]))
            case "append":
                return Write(key, model.Append(argument.encode()), model.NO_CONDITION)
            case "append-if-version":
                condition = model.Condition(argument[0])
                return Write(key, model.Append(argument[1].encode()), condition)
        if self.workload.model == "table-append":
            return Sync(key, 0, 1000)
        return Get(key)

    # -- what the answer means for the history ---------------------------------------

    def _record(self, process: int, kind: str, function: str, key: str, value) -> None:
        self.history.append(
            Event(process, kind, function, key, value, self._clock.next_sequence())
        )

    def _complete(self, operation: ClientOperation, answer) -> None:
        self._busy.discard(operation.process)
        self._ready_at[operation.process] = self._clock.now + self._rng.randint(
            *self.workload.think_ticks
        )
        function, key, process = operation.function, operation.key, operation.process
        if operation.must_settle and isinstance(answer, KvError) and not isinstance(
            answer, (ConditionFailed, NotFound)
        ):
            self._did_not_settle(operation, type(answer).__name__)
        if isinstance(answer, KvError):
            if answer.version is not None:
                self._versions_seen[key] = max(self._versions_seen[key], answer.version)
            if function == "read":
                if isinstance(answer, NotFound):
                    self._record(process, "ok", "read", key, [answer.version, None])
                else:
                    self._record(process, "fail", "read", key, None)
            elif isinstance(answer, ConditionFailed):
                self._record(process, "fail", function, key, answer.version)
            elif answer.indeterminate:
                self._record(process, "info", function, key, operation.argument)
            else:
                self._record(process, "fail", function, key, operation.argument)
            return
        self._versions_seen[key] = max(
            self._versions_seen[key], answer.get("version", 0), answer.get("table_version", 0)
        )
        if function == "read" and "rows" in answer:
            entries = [row[2].decode() for row in answer["rows"]]
            self._record(process, "ok", "read", key, entries)
        elif function == "read":
            self._record(process, "ok", "read", key, [answer["version"], answer["value"].decode()])
        else:
            self.acknowledged_writes[key] += 1
            result = answer["version"] if self.workload.model == "register" else operation.argument
            self._record(process, "ok", function, key, result)

    def _did_not_settle(self, operation: ClientOperation, why: str) -> None:
        self.unsettled.append(
            f"{operation.function} {operation.key} through n{operation.coordinator}: {why}"
        )
