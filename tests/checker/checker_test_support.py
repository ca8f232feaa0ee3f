"""Helpers for the checker tests: histories written by hand, and where the shared ones live.

A hand-made history is text, one event a line, in the order the events
happened (the line number is the time):

    0 invoke write 1
    1 invoke read
    0 ok write 1
    1 ok read 1

Each line is `process type function [key=KEY] [value]`, the value in JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from jepsen_tests.checker import Event, check_events, model_named
from jepsen_tests.checker.linearizability import CheckResult

# Process 1 reads 1 after process 0 has overwritten it with 2.
STALE_READ_TEXT = """
    0 invoke write 1
    0 ok write 1
    0 invoke write 2
    0 ok write 2
    1 invoke read
    1 ok read 1
"""


def events_from_text(text: str) -> list[Event]:
    events = []
    for line in text.strip().splitlines():
        words = line.split(maxsplit=3)
        process, event_type, function = int(words[0]), words[1], words[2]
        rest = words[3] if len(words) > 3 else ""
        key = None
        if rest.startswith("key="):
            key_and_value = rest.split(maxsplit=1)
            key = key_and_value[0][len("key="):]
            rest = key_and_value[1] if len(key_and_value) > 1 else ""
        value = json.loads(rest) if rest else None
        events.append(Event(process, event_type, function, key, value, len(events)))
    return events


def check_text(text: str, model_name: str = "register", **budget: float) -> CheckResult:
    return check_events(events_from_text(text), model_named(model_name), **budget)


def shared_histories_directory() -> Path:
    """`shared/histories` beside the repository, or where KVSVR_SHARED_DIR says."""
    override = os.environ.get("KVSVR_SHARED_DIR")
    if override:
        return Path(override) / "histories"
    repository_root = Path(__file__).resolve().parents[2]
    return (repository_root / ".." / "shared" / "histories").resolve()


def expected_verdicts() -> dict[str, bool]:
    """verdicts.tsv: history path (relative to the histories directory) -> linearizable."""
    lines = (shared_histories_directory() / "verdicts.tsv").read_text().splitlines()
    verdicts = {}
    for line in lines[1:]:
        if line.strip():
            path, verdict = line.split("\t")
            verdicts[path] = verdict.strip() == "true"
    return verdicts
