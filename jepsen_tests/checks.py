"""The checks a run must pass, each from what was recorded, never from the nodes' word.

Theory of operation. A run leaves four records: the history (what the
clients saw, docs/checker.md), the observations (the version the store
named for every acknowledged write and every value read), the final state
of every live node read from its own store after healing, and the node
logs with the nemesis log. Each check reads some of them and says passed,
failed, or could not decide (`passed is None`), with a one-line summary:

- linearizable: the checker, key by key; on failure the failing key's
  timeline is written next to the history;
- no lost writes: every acknowledged write is at or below the version
  every live node ended at, and no (key, version) ever held two values
  (an acknowledged write overwritten in place is lost too);
- converged: every live node holds the same state for every key;
- no crashes: no node log holds a traceback, no node exited unless the
  nemesis stopped it, and none refused to start except on data the
  nemesis damaged;
- availability: among operations begun while some live node reached a
  majority, the share that succeeded is at least the minimum asked for;
  beside it, for a reader, the longest stall: the longest stretch with a
  majority reachable throughout in which no operation succeeded.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .checker import (
    Operation,
    Verdict,
    check_operations,
    model_named,
    operations_from_events,
    read_history,
)
from .checker.timeline import write_timeline
from .workloads import Observation

TRACEBACK_MARKER = "Traceback (most recent call last)"


@dataclasses.dataclass
class CheckOutcome:
    name: str
    passed: bool | None  # None: could not decide
    summary: str
    details: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {"passed": self.passed, "summary": self.summary, **self.details}


def history_operations(history_path: Path) -> list[Operation]:
    return operations_from_events(read_history(history_path, "jsonl"), str(history_path))


def check_linearizable(
    operations: list[Operation], model_name: str, budget_seconds: float, timeline_path: Path
) -> CheckOutcome:
    result = check_operations(operations, model_named(model_name), budget_seconds=budget_seconds)
    details: dict[str, Any] = {
        "verdict": result.verdict.value,
        "keys": len(result.key_results),
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
    }
    if result.verdict is Verdict.LINEARIZABLE:
        return CheckOutcome("linearizable", True, result.describe(), details)
    if result.verdict is Verdict.UNKNOWN:
        details["unknown_keys"] = [str(key) for key in result.unknown_keys]
        return CheckOutcome("linearizable", None, result.describe(), details)
    failure = result.failure
    key_result = next(kr for kr in result.key_results if kr.key == failure.key)
    write_timeline(
        timeline_path, key_result.operations, key_result.failure,
        f"key {failure.key!r}: {result.verdict.value}",
    )
    details.update(failing_key=str(failure.key), timeline=timeline_path.name)
    return CheckOutcome("linearizable", False, result.describe(), details)


def check_no_lost_writes(
    observations: Iterable[Observation], final_states: dict[int, dict[str, Any]], workload: str
) -> CheckOutcome:
    """Acknowledged writes survive, and a version names one value only."""
    values_at: dict[tuple[str, int], set] = defaultdict(set)
    acknowledged: list[Observation] = []
    for observation in observations:
        values_at[(observation.key, observation.version)].add(observation.value)
        if observation.acknowledged_write:
            acknowledged.append(observation)
    final_version: dict[tuple[int, str], int] = {}
    for node_id, state in final_states.items():
        for key, value in state.items():
            if value is None:
                final_version[(node_id, key)] = 0
            elif workload == "register":
                final_version[(node_id, key)] = value[1]
                values_at[(key, value[1])].add(value[0])
            else:
                rows, version = value
                final_version[(node_id, key)] = version
                for row_version, entry in rows:
                    values_at[(key, row_version)].add(entry)
    problems = [
        f"{key} version {version} holds {sorted(values, key=str)}"
        for (key, version), values in sorted(values_at.items())
        if len(values) > 1
    ]
    for write in acknowledged:
        for node_id in final_states:
            ended_at = final_version.get((node_id, write.key), 0)
            if ended_at < write.version:
                problems.append(
                    f"{write.key}: {write.value} acknowledged at version {write.version}, "
                    f"node {node_id} ended at version {ended_at}"
                )
    details = {"acknowledged_writes": len(acknowledged), "problems": problems[:20]}
    if problems:
        return CheckOutcome("no_lost_writes", False, f"{len(problems)} problems: {problems[0]}", details)
    return CheckOutcome(
        "no_lost_writes", True,
        f"{len(acknowledged)} acknowledged writes all present on {len(final_states)} nodes", details,
    )


def check_converged(final_states: dict[int, dict[str, Any]], keys: list[str]) -> CheckOutcome:
    if not final_states:
        return CheckOutcome("converged", None, "no live node to read", {})
    differing = []
    for key in keys:
        states = {node_id: state.get(key) for node_id, state in final_states.items()}
        if len({repr(value) for value in states.values()}) > 1:
            differing.append({"key": key, "states": {str(n): _short(v) for n, v in states.items()}})
    details = {"keys": len(keys), "nodes": sorted(final_states), "differing": differing[:10]}
    if differing:
        return CheckOutcome(
            "converged", False, f"{len(differing)} of {len(keys)} keys differ between nodes", details
        )
    return CheckOutcome(
        "converged", True, f"{len(keys)} keys equal on nodes {sorted(final_states)}", details
    )


def _short(value: Any) -> Any:
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        rows, version = value
        return {"version": version, "rows": len(rows), "last": list(rows[-3:])}
    return value


def check_no_crashes(
    log_paths: dict[int, Path], nemesis_events: list[dict], stop_exit_codes: dict[str, int | None]
) -> CheckOutcome:
    problems: list[dict] = [
        {"node": node_id, "stop_exit_code": code}
        for node_id, code in stop_exit_codes.items()
        if code not in (None, 0)
    ]
    for node_id, path in sorted(log_paths.items()):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        count = text.count(TRACEBACK_MARKER)
        if count:
            start = text.index(TRACEBACK_MARKER)
            excerpt = text[start:].splitlines()[:40]
            problems.append({"node": node_id, "tracebacks": count, "first": excerpt})
    refused_after_damage = []
    for event in nemesis_events:
        if event["fault"] == "crash":
            problems.append({"node": event["nodes"][0], "exited": event.get("exit_code")})
        elif event["fault"] == "refused":
            if event.get("after") == "corrupt":
                refused_after_damage.append(event["nodes"][0])
            else:
                problems.append({"node": event["nodes"][0], "refused_after": event.get("after"),
                                 "message": event.get("message")})
    details = {"problems": problems, "refused_after_corruption": refused_after_damage}
    if problems:
        return CheckOutcome("no_crashes", False, f"{len(problems)} crashes or refusals: {problems[0]}"[:300], details)
    note = f"; nodes {refused_after_damage} refused damaged data" if refused_after_damage else ""
    return CheckOutcome("no_crashes", True, f"no tracebacks, no unexpected exits{note}", details)


def check_recovered(recovery: dict) -> CheckOutcome:
    if recovery["recovered"]:
        return CheckOutcome("recovered", True, f"every live node served a linearizable read "
                            f"{recovery['seconds']:.1f} s after healing", recovery)
    return CheckOutcome("recovered", False, f"nodes {recovery['not_recovered']} served no "
                        f"linearizable read within {recovery['seconds']:.0f} s of healing", recovery)


class MajorityTimeline:
    """Whether some live node reached a majority, at any moment, from the nemesis log."""

    def __init__(self, nemesis_events: list[dict]):
        events = sorted(nemesis_events, key=lambda event: event["time"])
        self.times = [event["time"] for event in events]
        self.states = [event["majority_reachable"] for event in events]

    def at(self, moment: int) -> bool:
        index = bisect.bisect_right(self.times, moment) - 1
        return True if index < 0 else self.states[index]  # the run starts healthy

    def reachable_within(self, start: int, end: int) -> list[tuple[int, int]]:
        """The stretches of [start, end] in which a majority was reachable."""
        stretches = []
        opened = start if self.at(start) else None
        first = bisect.bisect_right(self.times, start)
        for moment, reachable in zip(self.times[first:], self.states[first:], strict=True):
            if moment >= end:
                break
            if reachable and opened is None:
                opened = moment
            elif not reachable and opened is not None:
                stretches.append((opened, moment))
                opened = None
        if opened is not None:
            stretches.append((opened, end))
        return stretches


def longest_stall(success_times: list[int], last_invoked: int, timeline: MajorityTimeline,
                  window: tuple[int, int]) -> tuple[int, int]:
    """(length, start) of the longest stretch with a majority reachable
    throughout and no operation succeeding, while operations were begun.

    It runs from the window's start (or a success) to the next success, or
    to the last operation begun when nothing succeeded after it (a store
    that serves nothing from some moment on stalls too; the tail after the
    last operation begun, when nothing new is asked, does not count). A
    stretch without a majority splits a gap: only its reachable parts count.
    """
    end = max([last_invoked, *success_times])
    moments = sorted({window[0], end, *(moment for moment in success_times if moment > window[0])})
    longest = (0, window[0])
    for earlier, later in zip(moments, moments[1:], strict=False):
        for start, stop in timeline.reachable_within(earlier, later):
            longest = max(longest, (stop - start, start))
    return longest


def check_availability(
    operations: list[Operation], nemesis_events: list[dict], minimum_share: float,
    window: tuple[int, int],
) -> CheckOutcome:
    """Of the operations begun in the workload's window while a majority was
    reachable, the share that succeeded; and the longest stretch with a
    majority reachable in which no operation succeeded (a stall)."""
    timeline = MajorityTimeline(nemesis_events)
    counted = succeeded = 0
    successes = []
    last_invoked = window[0]
    for operation in operations:
        if not window[0] <= operation.invoke_time <= window[1]:
            continue
        last_invoked = max(last_invoked, operation.invoke_time)
        if operation.status == "ok":
            successes.append(operation.completion_time)
        if not timeline.at(operation.invoke_time):
            continue
        counted += 1
        succeeded += operation.status == "ok"
    share = succeeded / counted if counted else 0.0
    stall_ns, stall_start = longest_stall(successes, last_invoked, timeline, window)
    details = {"share": round(share, 4), "operations": counted, "succeeded": succeeded,
               "minimum": minimum_share,
               "longest_stall_seconds": round(stall_ns / 1e9, 3),
               "longest_stall_from_seconds": round((stall_start - window[0]) / 1e9, 3)}
    summary = (f"{share:.1%} of {counted} operations begun with a majority reachable succeeded; "
               f"longest stall {stall_ns / 1e9:.1f} s")
    if counted == 0:
        return CheckOutcome("availability", None, "no operation was begun with a majority reachable", details)
    return CheckOutcome("availability", share >= minimum_share, summary + f" (minimum {minimum_share:.0%})", details)
