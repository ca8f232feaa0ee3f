"""Histories: what clients saw, as events, and the operations they pair into.

Theory of operation. A history records, for every operation a client ran,
two events: the invocation (the request left) and the completion (the
answer came back). A completion has one of three types:

- `ok`: the operation took effect, once, somewhere between its invocation
  and its completion, and its result is the one recorded;
- `fail`: the operation certainly did not take effect (a failed
  compare-and-set is still a read: it saw a value other than the one it
  expected);
- `info`: nobody knows. The operation may take effect at any time after its
  invocation, even after the `info` was written, or never. An invocation
  that never completes (the client crashed, the test ended) means the same.

A process runs one operation at a time, so the events pair up per process:
each completion closes the one pending invocation of its process. Real
time is the only order between operations: A precedes B when A completed
before B was invoked; everything else is concurrent.

Our own format is JSON lines, one event per line:

    {"process": 3, "type": "invoke", "f": "cas", "key": "k1", "value": [1, 2], "time": 1700}
    {"process": 3, "type": "ok", "f": "cas", "key": "k1", "value": [1, 2], "time": 2950}

`time` is a monotonic clock in nanoseconds (if no event carries a time, the
line order is the time); `key` may be left out for a single register;
`value` is the argument on an invocation and the result on a completion
(a read's result, the list of a table read), any JSON value. The two
Jepsen formats of the reference histories read into the same events, with
the line number as the time: the etcd `.log` text logs and the kv EDN maps.

A file is input from outside: whatever is wrong with it is a
`HistoryError` naming the file and line, never a crash.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .edn import EdnError, Keyword, parse_edn

EVENT_TYPES = ("invoke", "ok", "fail", "info")
COMPLETION_TYPES = ("ok", "fail", "info")
HISTORY_FORMATS = ("jsonl", "jepsen-log", "jepsen-edn")

# Reading refuses lines longer than this: a history line is one small event,
# and a runaway line is a damaged file, not a history.
history_line_length_max_characters = 1_000_000


class HistoryError(ValueError):
    """A history file or event list that cannot be read as a history."""


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a history: an invocation or a completion."""

    process: Hashable
    type: str
    function: str
    key: Hashable | None
    value: Any
    time: int

    def to_json_object(self) -> dict[str, Any]:
        json_object: dict[str, Any] = {"process": self.process, "type": self.type, "f": self.function}
        if self.key is not None:
            json_object["key"] = self.key
        json_object["value"] = self.value
        json_object["time"] = self.time
        return json_object


@dataclass(frozen=True, slots=True)
class Operation:
    """An invocation paired with its completion.

    `status` is the completion type; an invocation that never completed has
    status `info` and no `completion_time`. `argument` and `result` are
    frozen (lists become tuples) so models can hash them.
    """

    index: int
    process: Hashable
    function: str
    key: Hashable | None
    argument: Any
    status: str
    result: Any
    invoke_time: int
    completion_time: int | None

    @property
    def is_indeterminate(self) -> bool:
        return self.status == "info"

    def describe(self) -> str:
        """One line a person can find in the history file."""
        text = f"#{self.index} process {self.process}: {self.function}"
        if self.argument is not None:
            text += f" {_show_value(self.argument)}"
        if self.status == "ok" and self.result is not None and self.result != self.argument:
            text += f" -> {_show_value(self.result)}"
        if self.completion_time is None:
            text += " (never completed)"
        else:
            text += f" ({self.status})"
        return text


def _show_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show_value(item) for item in value) + "]"
    return json.dumps(value) if isinstance(value, str) or value is None else str(value)


def freeze_value(value: Any) -> Hashable:
    """Turn a JSON or EDN value into an equal, hashable one."""
    if isinstance(value, list | tuple):
        return tuple(freeze_value(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((str(key), freeze_value(item)) for key, item in value.items()))
    if isinstance(value, Keyword):
        return value
    if isinstance(value, set | frozenset):
        return frozenset(freeze_value(item) for item in value)
    return value


def operations_from_events(events: Iterable[Event], source: str = "history") -> list[Operation]:
    """Pair each completion with its process's pending invocation.

    Operations come back in invocation order; each one's `index` is its
    position in that order.
    """
    pending_by_process: dict[Hashable, tuple[int, Event]] = {}
    paired: list[tuple[int, Event, Event | None]] = []
    for position, event in enumerate(events):
        if event.type == "invoke":
            if event.process in pending_by_process:
                raise HistoryError(
                    f"{source}: event {position + 1}: process {event.process} invokes "
                    f"{event.function} while its {pending_by_process[event.process][1].function} is pending"
                )
            pending_by_process[event.process] = (len(paired), event)
            paired.append((position, event, None))
            continue
        if event.type not in COMPLETION_TYPES:
            raise HistoryError(f"{source}: event {position + 1}: unknown type {event.type!r}")
        if event.process not in pending_by_process:
            raise HistoryError(
                f"{source}: event {position + 1}: process {event.process} completes "
                f"{event.function} that it never invoked"
            )
        slot, invocation = pending_by_process.pop(event.process)
        if event.function != invocation.function:
            raise HistoryError(
                f"{source}: event {position + 1}: process {event.process} completes "
                f"{event.function} but invoked {invocation.function}"
            )
        if event.key is not None and event.key != invocation.key:
            raise HistoryError(
                f"{source}: event {position + 1}: process {event.process} completes key "
                f"{event.key!r} but invoked key {invocation.key!r}"
            )
        if event.time < invocation.time:
            raise HistoryError(
                f"{source}: event {position + 1}: process {event.process} completes at time "
                f"{event.time}, before its invocation at {invocation.time}"
            )
        paired[slot] = (paired[slot][0], invocation, event)
    operations = []
    for index, (_position, invocation, completion) in enumerate(paired):
        if completion is None:
            status, result, completion_time = "info", None, None
        else:
            status, completion_time = completion.type, completion.time
            result = freeze_value(completion.value) if status != "info" else None
        operations.append(
            Operation(
                index=index,
                process=invocation.process,
                function=invocation.function,
                key=invocation.key,
                argument=freeze_value(invocation.value),
                status=status,
                result=result,
                invoke_time=invocation.time,
                completion_time=completion_time,
            )
        )
    return operations


# --- reading ---------------------------------------------------------------


def read_history(path: str | Path, format: str | None = None) -> list[Event]:
    """Read a history file in one of `HISTORY_FORMATS`; None detects it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise HistoryError(f"{path}: cannot read the file: {error}") from None
    lines = text.splitlines()
    if format is None:
        format = detect_format(lines, str(path))
    return parse_history_lines(lines, format, str(path))


def parse_history_lines(lines: Iterable[str], format: str, source: str = "history") -> list[Event]:
    """Parse the lines of a history in the given format into events."""
    if format not in _PARSER_OF_FORMAT:
        raise HistoryError(f"{source}: unknown history format {format!r}; known: {', '.join(HISTORY_FORMATS)}")
    events = []
    for line_number, line in enumerate(lines, start=1):
        if len(line) > history_line_length_max_characters:
            raise HistoryError(f"{source}:{line_number}: line longer than {history_line_length_max_characters} characters")
        if not line.strip():
            continue
        event = _PARSER_OF_FORMAT[format](line, line_number, f"{source}:{line_number}")
        if event is not None:
            events.append(event)
    if format == "jsonl":
        events = _jsonl_times_checked(events, source)
    return events


def detect_format(lines: list[str], source: str = "history") -> str:
    """Guess the format from the first line that is not blank."""
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("{:") or stripped.startswith("{ :"):
            return "jepsen-edn"
        if stripped.startswith("{"):
            return "jsonl"
        if _JEPSEN_LOG_LINE.search(stripped) or "jepsen" in stripped:
            return "jepsen-log"
        break
    raise HistoryError(f"{source}: cannot tell the history format; pass it explicitly")


_NO_TIME = -1


def _parse_jsonl_line(line: str, line_number: int, where: str) -> Event:
    try:
        json_object = json.loads(line)
    except json.JSONDecodeError as error:
        raise HistoryError(f"{where}: not JSON: {error.msg}") from None
    if not isinstance(json_object, dict):
        raise HistoryError(f"{where}: an event must be a JSON object")
    for field in ("process", "type", "f"):
        if field not in json_object:
            raise HistoryError(f"{where}: the event has no {field!r}")
    process = json_object["process"]
    if not isinstance(process, int | str) or isinstance(process, bool):
        raise HistoryError(f"{where}: 'process' must be an integer or a string")
    event_type = json_object["type"]
    if event_type not in EVENT_TYPES:
        raise HistoryError(f"{where}: 'type' must be one of {', '.join(EVENT_TYPES)}, not {event_type!r}")
    function = json_object["f"]
    if not isinstance(function, str) or not function:
        raise HistoryError(f"{where}: 'f' must be a non-empty string")
    key = freeze_value(json_object.get("key"))
    if isinstance(key, frozenset):
        raise HistoryError(f"{where}: 'key' must be a string, number or list")
    event_time = json_object.get("time", _NO_TIME)
    if event_time is not _NO_TIME and (not isinstance(event_time, int) or isinstance(event_time, bool)):
        raise HistoryError(f"{where}: 'time' must be an integer (monotonic nanoseconds)")
    return Event(process, event_type, function, key, json_object.get("value"), event_time)


def _jsonl_times_checked(events: list[Event], source: str) -> list[Event]:
    with_time = sum(1 for event in events if event.time is not _NO_TIME)
    if with_time == len(events):
        return events
    if with_time:
        raise HistoryError(f"{source}: some events have a 'time' and some do not")
    return [
        Event(event.process, event.type, event.function, event.key, event.value, position)
        for position, event in enumerate(events)
    ]


_JEPSEN_LOG_LINE = re.compile(
    r"\bINFO\s+jepsen\.util\s+-\s+(?P<process>\S+)\s+:(?P<type>invoke|ok|fail|info)"
    r"\s+:(?P<function>\S+)(?:\s+(?P<value>.*?))?\s*$"
)


def _parse_jepsen_log_line(line: str, line_number: int, where: str) -> Event | None:
    match = _JEPSEN_LOG_LINE.search(line)
    if match is None:
        return None  # nemesis, setup and teardown lines carry no client operation
    process_text = match["process"]
    if not re.fullmatch(r"\d+", process_text):
        return None  # the nemesis is not a client
    value_text = match["value"]
    try:
        value = parse_edn(value_text) if value_text else None
    except EdnError as error:
        raise HistoryError(f"{where}: cannot read the value {value_text!r}: {error}") from None
    return Event(int(process_text), match["type"], match["function"], None, value, line_number)


def _parse_jepsen_edn_line(line: str, line_number: int, where: str) -> Event | None:
    try:
        event_map = parse_edn(line)
    except EdnError as error:
        raise HistoryError(f"{where}: not an EDN map: {error}") from None
    if not isinstance(event_map, dict):
        raise HistoryError(f"{where}: an event must be an EDN map")
    fields = {key.name: value for key, value in event_map.items() if isinstance(key, Keyword)}
    for field in ("process", "type", "f"):
        if field not in fields:
            raise HistoryError(f"{where}: the event has no :{field}")
    process = fields["process"]
    if isinstance(process, Keyword):
        return None  # the nemesis is not a client
    if not isinstance(process, int) or isinstance(process, bool):
        raise HistoryError(f"{where}: :process must be an integer")
    event_type, function = fields["type"], fields["f"]
    if not isinstance(event_type, Keyword) or event_type.name not in EVENT_TYPES:
        raise HistoryError(f"{where}: :type must be one of {', '.join(':' + name for name in EVENT_TYPES)}")
    if not isinstance(function, Keyword):
        raise HistoryError(f"{where}: :f must be a keyword")
    return Event(
        process, event_type.name, function.name, freeze_value(fields.get("key")), fields.get("value"), line_number
    )


_PARSER_OF_FORMAT: dict[str, Callable[[str, int, str], Event | None]] = {
    "jsonl": _parse_jsonl_line,
    "jepsen-log": _parse_jepsen_log_line,
    "jepsen-edn": _parse_jepsen_edn_line,
}


# --- writing ---------------------------------------------------------------


class HistoryWriter:
    """Appends events to a JSON-lines history file as they happen.

    Each event is one `write` of one whole line, flushed at once, under a
    lock: the clients of one trio process (or a few threads) can share a
    writer, and a crash loses at most the line being written. The clock is
    an input so tests and the simulator can pass their own.
    """

    def __init__(self, path: str | Path, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._file: IO[str] = self.path.open("a", encoding="utf-8")

    def invoke(self, process: Hashable, function: str, key: Hashable | None = None, value: Any = None) -> Event:
        return self.write_event(process, "invoke", function, key, value)

    def ok(self, process: Hashable, function: str, key: Hashable | None = None, value: Any = None) -> Event:
        return self.write_event(process, "ok", function, key, value)

    def fail(self, process: Hashable, function: str, key: Hashable | None = None, value: Any = None) -> Event:
        return self.write_event(process, "fail", function, key, value)

    def info(self, process: Hashable, function: str, key: Hashable | None = None, value: Any = None) -> Event:
        return self.write_event(process, "info", function, key, value)

    def write_event(
        self, process: Hashable, event_type: str, function: str, key: Hashable | None, value: Any
    ) -> Event:
        assert event_type in EVENT_TYPES, event_type
        with self._lock:
            event = Event(process, event_type, function, key, value, self._clock())
            line = json.dumps(event.to_json_object(), separators=(",", ":")) + "\n"
            self._file.write(line)
            self._file.flush()
        return event

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exception_info: object) -> None:
        self.close()
