"""Pictures of a run a person reads at a glance: latency and throughput, faults shaded.

Theory of operation. Everything drawn comes from the history (each
operation's invocation, completion and outcome) and the nemesis log (when
each fault started and ended). Time runs along x in seconds since the
workload began; every fault is a shaded band with its name, so a reader
sees what each fault did to the clients. `latency.png` has one panel per
operation type, a dot per operation at its invocation, coloured by
outcome (an operation that never completed is drawn at the run's end);
`throughput.png` counts completions per second by outcome. matplotlib is
imported here only, with the Agg backend, so nothing needs a display.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .checker import Operation

OUTCOME_COLOURS = {"ok": "#2a9d45", "fail": "#d1495b", "info": "#edae49"}
FAULT_COLOURS = {
    "partition": "#8ecae6",
    "kill": "#f4a3a8",
    "pause": "#cdb4db",
    "restart-all": "#ffb703",
    "corrupt": "#adb5bd",
}
FIGURE_DOTS_PER_INCH = 80
THROUGHPUT_BUCKET_SECONDS = 1.0


def fault_intervals(nemesis_events: list[dict], started_ns: int, ended_ns: int) -> list[tuple[str, float, float]]:
    """(fault, start, end) in seconds since the start, from start/end lines of the nemesis log."""
    open_faults: dict[str, float] = {}
    intervals = []
    for event in nemesis_events:
        moment = (event["time"] - started_ns) / 1e9
        if event["phase"] == "start":
            open_faults[event["fault"]] = moment
        elif event["phase"] == "end" and event["fault"] in open_faults:
            intervals.append((event["fault"], open_faults.pop(event["fault"]), moment))
    end = (ended_ns - started_ns) / 1e9
    intervals.extend((fault, start, end) for fault, start in open_faults.items())
    return intervals


def write_plots(
    out_dir: Path, operations: list[Operation], nemesis_events: list[dict],
    started_ns: int, ended_ns: int, title: str,
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    from matplotlib.patches import Patch

    intervals = fault_intervals(nemesis_events, started_ns, ended_ns)
    end_seconds = (ended_ns - started_ns) / 1e9
    functions = sorted({operation.function for operation in operations}) or ["(none)"]

    def shade(axes) -> None:
        for fault, start, end in intervals:
            axes.axvspan(start, max(end, start + 0.2), color=FAULT_COLOURS.get(fault, "#dddddd"),
                         alpha=0.45, linewidth=0)

    fault_legend = [Patch(color=FAULT_COLOURS[fault], alpha=0.45, label=fault)
                    for fault in FAULT_COLOURS if any(kind == fault for kind, _, _ in intervals)]
    outcome_legend = [Patch(color=colour, label=outcome) for outcome, colour in OUTCOME_COLOURS.items()]

    figure, panels = pyplot.subplots(len(functions), 1, figsize=(9, 1.9 * len(functions) + 0.8),
                                     sharex=True, squeeze=False)
    for axes, function in zip(panels[:, 0], functions, strict=True):
        shade(axes)
        for outcome, colour in OUTCOME_COLOURS.items():
            xs, ys = [], []
            for operation in operations:
                if operation.function != function or operation.status != outcome:
                    continue
                completed = operation.completion_time if operation.completion_time is not None else ended_ns
                xs.append((operation.invoke_time - started_ns) / 1e9)
                ys.append(max((completed - operation.invoke_time) / 1e6, 0.05))
            axes.scatter(xs, ys, s=4, color=colour, linewidths=0, label=outcome)
        axes.set_yscale("log")
        axes.set_ylabel(f"{function}\nlatency (ms)")
        axes.set_xlim(0, end_seconds)
        axes.grid(True, axis="y", alpha=0.3)
    panels[0, 0].set_title(title, fontsize=10)
    panels[-1, 0].set_xlabel("seconds since the workload began")
    panels[0, 0].legend(handles=outcome_legend + fault_legend, loc="upper left", fontsize=7,
                        ncol=len(outcome_legend) + len(fault_legend), framealpha=0.8)
    figure.tight_layout()
    latency_path = out_dir / "latency.png"
    figure.savefig(latency_path, dpi=FIGURE_DOTS_PER_INCH)
    pyplot.close(figure)

    buckets = int(end_seconds / THROUGHPUT_BUCKET_SECONDS) + 1
    counts = {outcome: Counter() for outcome in OUTCOME_COLOURS}
    for operation in operations:
        if operation.completion_time is None:
            continue
        bucket = int((operation.completion_time - started_ns) / 1e9 / THROUGHPUT_BUCKET_SECONDS)
        counts[operation.status][bucket] += 1
    figure, axes = pyplot.subplots(figsize=(9, 2.8))
    shade(axes)
    xs = [bucket * THROUGHPUT_BUCKET_SECONDS for bucket in range(buckets)]
    bottom = [0] * buckets
    for outcome, colour in OUTCOME_COLOURS.items():
        heights = [counts[outcome][bucket] / THROUGHPUT_BUCKET_SECONDS for bucket in range(buckets)]
        axes.bar(xs, heights, width=THROUGHPUT_BUCKET_SECONDS, bottom=bottom, align="edge",
                 color=colour, linewidth=0)
        bottom = [low + height for low, height in zip(bottom, heights, strict=True)]
    axes.set_xlim(0, end_seconds)
    axes.set_ylabel("completions / s")
    axes.set_xlabel("seconds since the workload began")
    axes.set_title(title, fontsize=10)
    axes.legend(handles=outcome_legend + fault_legend, loc="upper left", fontsize=7,
                ncol=len(outcome_legend) + len(fault_legend), framealpha=0.8)
    figure.tight_layout()
    throughput_path = out_dir / "throughput.png"
    figure.savefig(throughput_path, dpi=FIGURE_DOTS_PER_INCH)
    pyplot.close(figure)
    return [latency_path, throughput_path]
