"""Command line of the store's consistency tests: `python -m jepsen_tests COMMAND`.

Commands:

- `check FILE... --model M`: decide whether each history is linearizable.
  Exit status 0 when every history is, 1 when one is not, 2 when a search
  ran out of budget or the input is bad (one line on stderr says why).
- `run --nodes N --workload W --nemesis N1,N2 --time S --rate R --seed S --out DIR
  [--address-block B]`:
  one fault-injection run against real node processes (runner.py,
  docs/jepsen.md). Exit status 0 when every check passed, 1 when one
  failed, 2 when the run could not be done or a check could not decide.

Each command is a function registered on the `main` group, so others (the
fault-injection runner) sit beside `check` without touching it.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Hashable
from pathlib import Path

import click

from .checker import (
    HISTORY_FORMATS,
    MODELS,
    HistoryError,
    Verdict,
    check_events,
    model_named,
    read_history,
)
from .checker.linearizability import CheckResult
from .checker.timeline import write_timeline
from .nemesis import NEMESES, PARTITION_SHAPES
from .nodes import ADDRESS_BLOCK_MAX
from .runner import RunConfig
from .runner import run as run_test
from .workloads import ROUTINGS, WORKLOADS

EXIT_LINEARIZABLE = 0
EXIT_NOT_LINEARIZABLE = 1
EXIT_UNKNOWN_OR_BAD_INPUT = 2


@click.group()
def main() -> None:
    """Consistency tests of the store: check histories for linearizability."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model_name", required=True, type=click.Choice(sorted(MODELS)), help="Sequential model of one key.")
@click.option(
    "--format",
    "history_format",
    type=click.Choice(HISTORY_FORMATS),
    default=None,
    help="History format; detected from the first line when left out.",
)
@click.option(
    "--timeline",
    "timeline_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write an HTML timeline of the failing key (one FILE only).",
)
@click.option(
    "--budget-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Give up with 'unknown' (exit 2) after this long per history.",
)
def check(
    files: tuple[Path, ...],
    model_name: str,
    history_format: str | None,
    timeline_path: Path | None,
    budget_seconds: float | None,
) -> None:
    """Decide whether each history FILE is linearizable."""
    if timeline_path is not None and len(files) != 1:
        _exit_bad_input("--timeline takes exactly one FILE")
    model = model_named(model_name)
    counts = {verdict: 0 for verdict in Verdict}
    reading_seconds = checking_seconds = 0.0
    for path in files:
        started = time.perf_counter()
        try:
            events = read_history(path, history_format)
            reading_seconds += time.perf_counter() - started
            result = check_events(events, model, budget_seconds=budget_seconds)
        except HistoryError as error:
            _exit_bad_input(str(error))
        checking_seconds += result.seconds
        counts[result.verdict] += 1
        click.echo(f"{path}: {result.describe()}")
        if timeline_path is not None:
            _write_timeline(timeline_path, path, result)
    if len(files) > 1:
        click.echo(
            f"{len(files)} histories: {counts[Verdict.LINEARIZABLE]} linearizable, "
            f"{counts[Verdict.NOT_LINEARIZABLE]} not, {counts[Verdict.UNKNOWN]} unknown; "
            f"reading {reading_seconds:.3f} s, checking {checking_seconds:.3f} s"
        )
    if counts[Verdict.NOT_LINEARIZABLE]:
        sys.exit(EXIT_NOT_LINEARIZABLE)
    if counts[Verdict.UNKNOWN]:
        sys.exit(EXIT_UNKNOWN_OR_BAD_INPUT)
    sys.exit(EXIT_LINEARIZABLE)


@main.command()
@click.option("--nodes", type=click.Choice(["3", "5"]), default="3", show_default=True,
              help="Members of the replica group.")
@click.option("--workload", type=click.Choice(WORKLOADS), default="register", show_default=True)
@click.option("--nemesis", "nemesis_text", default="partition,kill,pause", show_default=True,
              help=f"Comma list of {', '.join(NEMESES)}; or none.")
@click.option("--time", "time_seconds", type=click.FloatRange(min=1), default=60, show_default=True,
              help="Seconds of workload and faults.")
@click.option("--rate", type=click.FloatRange(min=0.1), default=30, show_default=True,
              help="Operations started per second, all clients together.")
@click.option("--seed", type=int, default=None, help="Seed of the schedule and the workload (default: random).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Results folder (history, verdict, logs, plots); must not hold an earlier run.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=6, show_default=True,
              help="Client processes, one operation at a time each.")
@click.option("--operation-timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Seconds before an operation is given up as indeterminate.")
@click.option("--availability-min", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Least share of operations begun with a majority reachable that must succeed.")
@click.option("--check-budget-seconds", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Give the linearizability check up as unknown after this long.")
@click.option("--routing", type=click.Choice(ROUTINGS), default="random", show_default=True,
              help="random: each operation to a random node; preferred: to the key's coordinator.")
@click.option("--partition-shapes", default=",".join(PARTITION_SHAPES), show_default=True,
              help="Comma list of the partition shapes the partition nemesis draws from.")
@click.option("--address-block", type=click.IntRange(0, ADDRESS_BLOCK_MAX), default=0, show_default=True,
              help="Nodes on 127.N.0.1.., clients on 127.N.0.100; runs in different blocks "
                   "can go on at once.")
@click.option("--test-only-bug", type=click.Choice(["read-without-quorum"]), default=None, hidden=True,
              help="Start the nodes with a planted bug, to show the checks catch it.")
def run(nodes: str, workload: str, nemesis_text: str, time_seconds: float, rate: float,
        seed: int | None, out: Path, concurrency: int, operation_timeout: float,
        availability_min: float, check_budget_seconds: float, routing: str,
        partition_shapes: str, address_block: int, test_only_bug: str | None) -> None:
    """Run a fault-injection test against a group of real node processes."""
    nemeses = tuple(name for name in nemesis_text.split(",") if name and name != "none")
    unknown = sorted(set(nemeses) - set(NEMESES))
    if unknown:
        raise click.UsageError(f"unknown nemesis {', '.join(unknown)}; known: {', '.join(NEMESES)}")
    shapes = tuple(shape for shape in partition_shapes.split(",") if shape)
    unknown = sorted(set(shapes) - set(PARTITION_SHAPES))
    if unknown or not shapes:
        raise click.UsageError(f"partition shapes: choose from {', '.join(PARTITION_SHAPES)}")
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
    config = RunConfig(
        nodes=int(nodes), workload=workload, nemeses=nemeses, time_seconds=time_seconds, rate=rate,
        seed=seed, out=out, test_only_bug=test_only_bug, concurrency=concurrency,
        operation_timeout_seconds=operation_timeout, availability_minimum=availability_min,
        check_budget_seconds=check_budget_seconds, routing=routing, partition_shapes=shapes,
        address_block=address_block,
    )
    sys.exit(run_test(config))


def _write_timeline(timeline_path: Path, history_path: Path, result: CheckResult) -> None:
    """Draw the failing key, else the first key left unknown, else the busiest key."""
    chosen_key: Hashable | None
    if result.failure is not None:
        chosen_key = result.failure.key
    elif result.unknown_keys:
        chosen_key = result.unknown_keys[0]
    elif result.key_results:
        chosen_key = max(result.key_results, key=lambda key_result: len(key_result.operations)).key
    else:
        click.echo("the history has no operations; no timeline written", err=True)
        return
    key_result = next(key_result for key_result in result.key_results if key_result.key == chosen_key)
    of_key = "" if chosen_key is None else f" of key {chosen_key!r}"
    title = f"{history_path.name}{of_key}: {result.verdict.value}"
    try:
        write_timeline(timeline_path, key_result.operations, key_result.failure, title)
    except OSError as error:
        _exit_bad_input(f"{timeline_path}: cannot write the timeline: {error}")
    click.echo(f"timeline{of_key} written to {timeline_path}")


def _exit_bad_input(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_UNKNOWN_OR_BAD_INPUT)


if __name__ == "__main__":
    main()
