"""`python -m jepsen_tests.simulator`: run seeds, replay one, or run the planted bugs.

`--seeds 200` runs seeds 0..199 and prints every failure with the command
that replays it; `--seed N` replays one run and prints its trace summary;
`--planted-bugs` prints the planted-bug table. A run depends on its seed
and settings only (not on Python's hash seed).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

from .planted_bugs import print_planted_bugs
from .simulation import RunResult, Simulation, replay_command
from .workload import WORKLOAD_MODELS, Workload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jepsen_tests.simulator")
    parser.add_argument("--seed", type=int, help="replay one seed and print its trace")
    parser.add_argument("--seeds", type=int, default=50, help="run seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=3, choices=(3, 5))
    parser.add_argument("--operations", type=int, default=Workload.operations)
    parser.add_argument("--keys", type=int, default=Workload.keys)
    parser.add_argument("--workload", choices=WORKLOAD_MODELS, default="register")
    parser.add_argument("--planted-bugs", action="store_true",
                        help="run every planted bug (seeds 0..N-1 each, N from --seeds) and "
                             "print which check caught it and after how many seeds")
    arguments = parser.parse_args(argv)
    if arguments.planted_bugs:
        return print_planted_bugs(arguments.seeds)
    workload = Workload(
        model=arguments.workload, operations=arguments.operations, keys=arguments.keys
    )
    if arguments.seed is not None:
        simulation = Simulation(arguments.seed, members=arguments.members, workload=workload)
        result = simulation.run()
        for tick, line in simulation.trace:
            print(f"  t{tick}: {line}")
        _print_result(result)
        print(f"  {result.settings}")
        print("  " + ", ".join(f"{name} {count}" for name, count in sorted(result.counters.items())))
        return 0 if result.passed else 1
    failed = 0
    started = time.perf_counter()
    totals: collections.Counter = collections.Counter()
    verdicts: collections.Counter = collections.Counter()
    for seed in range(arguments.first_seed, arguments.first_seed + arguments.seeds):
        result = Simulation(seed, members=arguments.members, workload=workload).run()
        totals.update(result.counters)
        verdicts[result.verdict] += 1
        if not result.passed:
            failed += 1
            _print_result(result)
            print(f"  replay: {replay_command(seed, arguments.members, workload)}", flush=True)
    total = arguments.seeds
    print(f"{total - failed} passed, {failed} failed  "
          f"({time.perf_counter() - started:.1f} s, {arguments.members} members, "
          f"{arguments.workload})")
    print("verdicts: " + ", ".join(f"{name} {count}" for name, count in sorted(verdicts.items())))
    print("totals: " + ", ".join(f"{name} {count}" for name, count in sorted(totals.items())))
    return 1 if failed else 0


def _print_result(result: RunResult) -> None:
    status = "PASS" if result.passed else "FAIL"
    print(f"seed {result.seed}: {status} {result.operations} ops ({result.ok} ok), "
          f"{result.ticks} ticks, {result.seconds:.2f} s, {result.verdict}")
    for problem in result.problems:
        print(f"  {problem}")


if __name__ == "__main__":
    sys.exit(main())
