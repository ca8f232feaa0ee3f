"""A picture of one key's history: a self-contained HTML page with an SVG timeline.

Theory of operation. Each process gets a lane; each operation is a bar
from its invocation to its completion. The horizontal axis is the order of
events, not their clock time: every distinct event time gets one column, so
a burst of operations within a microsecond is as readable as one spread
over seconds, and "A ended before B began" is exactly "A's bar ends left of
B's". Indeterminate operations have no end: their bars run, dashed, to the
right edge.

Colours say what the search found: operations in the longest linearizable
prefix are green and numbered in the order the prefix places them; the
operation that cannot be placed is red; the rest are grey (failed
operations) or blue. Hovering a bar shows the operation in full. The page
needs no script and no network, so it can be attached to a CI run.
"""

from __future__ import annotations

import html
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from .history import Operation
from .linearizability import Failure

column_width_pixels = 16
lane_height_pixels = 34
bar_height_pixels = 22
margin_left_pixels = 110
margin_top_pixels = 30
label_length_max_characters = 24

_COLOUR_PREFIX = "#8fd19e"
_COLOUR_FAILING = "#e4572e"
_COLOUR_OK = "#9dc3e6"
_COLOUR_FAILED = "#d0d0d0"
_COLOUR_INDETERMINATE = "#f6d186"


def _short_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + " ".join(_short_value(item) for item in value) + "]"
    if value is None:
        return "nil"
    return str(value)


def operation_label(operation: Operation) -> str:
    """A few characters naming the operation, for inside its bar."""
    label = operation.function
    if operation.argument is not None:
        label += " " + _short_value(operation.argument)
    if operation.status == "ok" and operation.result is not None and operation.result != operation.argument:
        label += " → " + _short_value(operation.result)
    if operation.status == "fail":
        label += " ✗"
    if operation.is_indeterminate:
        label += " ?"
    if len(label) > label_length_max_characters:
        label = label[: label_length_max_characters - 1] + "…"
    return label


def render_timeline(
    operations: Sequence[Operation],
    failure: Failure | None = None,
    title: str = "history",
) -> str:
    """The HTML page for one key's operations, marking the failure if given."""
    event_times = sorted(
        {operation.invoke_time for operation in operations}
        | {operation.completion_time for operation in operations if operation.completion_time is not None}
    )
    column_of_time = {event_time: column for column, event_time in enumerate(event_times)}
    last_column = len(event_times)
    processes: list[Hashable] = []
    for operation in sorted(operations, key=lambda operation: operation.invoke_time):
        if operation.process not in processes:
            processes.append(operation.process)
    lane_of_process = {process: lane for lane, process in enumerate(processes)}
    prefix_position = {}
    failing_index = None
    if failure is not None:
        prefix_position = {operation.index: position for position, operation in enumerate(failure.longest_prefix, 1)}
        failing_index = failure.operation.index

    width = margin_left_pixels + (last_column + 2) * column_width_pixels
    height = margin_top_pixels + len(processes) * lane_height_pixels + 10
    shapes = []
    for lane, process in enumerate(processes):
        y = margin_top_pixels + lane * lane_height_pixels
        shapes.append(
            f'<text x="8" y="{y + bar_height_pixels - 6}" class="lane">process {html.escape(str(process))}</text>'
            f'<line x1="{margin_left_pixels}" x2="{width}" y1="{y + lane_height_pixels - 4}" '
            f'y2="{y + lane_height_pixels - 4}" class="rule"/>'
        )
    for operation in operations:
        start = column_of_time[operation.invoke_time]
        end = last_column if operation.is_indeterminate else column_of_time[operation.completion_time]
        x = margin_left_pixels + start * column_width_pixels
        bar_width = max(column_width_pixels // 2, (end - start) * column_width_pixels)
        y = margin_top_pixels + lane_of_process[operation.process] * lane_height_pixels
        if operation.index == failing_index:
            colour, css_class = _COLOUR_FAILING, "bar failing"
        elif operation.index in prefix_position:
            colour, css_class = _COLOUR_PREFIX, "bar"
        elif operation.is_indeterminate:
            colour, css_class = _COLOUR_INDETERMINATE, "bar indeterminate"
        elif operation.status == "fail":
            colour, css_class = _COLOUR_FAILED, "bar"
        else:
            colour, css_class = _COLOUR_OK, "bar"
        label = operation_label(operation)
        if operation.index in prefix_position:
            label = f"{prefix_position[operation.index]}. {label}"
        tooltip = operation.describe()
        if operation.index in prefix_position:
            tooltip += f" — step {prefix_position[operation.index]} of the longest linearizable prefix"
        if operation.index == failing_index:
            tooltip += " — cannot be linearized"
        shapes.append(
            f'<g><title>{html.escape(tooltip)}</title>'
            f'<rect x="{x}" y="{y}" width="{bar_width}" height="{bar_height_pixels}" rx="3" '
            f'fill="{colour}" class="{css_class}"/>'
            f'<text x="{x + 3}" y="{y + bar_height_pixels - 7}" class="label">{html.escape(label)}</text></g>'
        )

    summary = "<p>No failure to mark: every operation of this key was placed.</p>"
    prefix_rows = ""
    if failure is not None:
        summary = f"<p class='failure'>{html.escape(failure.describe())}</p>"
        prefix_rows = "".join(
            f"<li>{html.escape(operation.describe())}</li>" for operation in failure.longest_prefix
        )
        prefix_rows = (
            f"<details><summary>The longest linearizable prefix, in order "
            f"({len(failure.longest_prefix)} operations)</summary><ol>{prefix_rows}</ol></details>"
        )
    legend = "".join(
        f'<span class="swatch" style="background:{colour}"></span>{html.escape(meaning)} '
        for colour, meaning in (
            (_COLOUR_PREFIX, "in the longest linearizable prefix (numbered in its order)"),
            (_COLOUR_FAILING, "cannot be linearized"),
            (_COLOUR_OK, "ok"),
            (_COLOUR_FAILED, "failed"),
            (_COLOUR_INDETERMINATE, "indeterminate (may take effect any time after its start, or never)"),
        )
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
.scroll {{ overflow-x: auto; border: 1px solid #ccc; }}
.lane {{ font-size: 12px; fill: #333; }}
.label {{ font-size: 11px; fill: #111; pointer-events: none; }}
.rule {{ stroke: #eee; }}
.bar {{ stroke: #555; stroke-width: 0.5; }}
.bar.failing {{ stroke: #900; stroke-width: 3; }}
.bar.indeterminate {{ stroke-dasharray: 4 3; }}
.failure {{ color: #900; font-weight: bold; }}
.swatch {{ display: inline-block; width: 1em; height: 1em; margin: 0 0.3em 0 1em; vertical-align: middle; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{summary}
<p>Time runs left to right in event order (one column per distinct event time);
a bar spans an operation's invocation to its completion.</p>
<p>{legend}</p>
<div class="scroll"><svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">
{"".join(shapes)}
</svg></div>
{prefix_rows}
</body></html>
"""


def write_timeline(path: str | Path, operations: Sequence[Operation], failure: Failure | None, title: str) -> None:
    """Write `render_timeline` to a file."""
    Path(path).write_text(render_timeline(operations, failure, title), encoding="utf-8")
