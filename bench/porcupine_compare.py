"""The linearizability checker beside porcupine, on the same history files.

    python bench/porcupine_compare.py                      # a table
    python bench/porcupine_compare.py --repeat 7 --json
    python bench/porcupine_compare.py --porcupine-source ~/src/porcupine --seeds 1,2

Theory. porcupine (anishathalye/porcupine, Go) is built from its source
with the Go toolchain into a small harness, `bench/porcupine/main.go`,
which reads a history file, turns it into porcupine Operations and times
only `CheckOperationsTimeout` on them (its kv model partitioned by key, as
porcupine's own kv example does). Our checker reads the same file and
`check_operations` is timed the same way: after parsing, in this process.
Each history is checked `--repeat` times by each checker and the medians
are compared; the two never run at the same time.

The histories: every one in the shared reference set (`../shared/histories`,
or `$KVSVR_SHARED_DIR/histories`, with `verdicts.tsv`), the large kv
histories of `jepsen_tests.checker.generated_histories` (50 clients, 2,000
operations, 10 keys; for each seed one linearizable and one of each
anomaly, with no and with 5% indeterminate operations), and, when the
porcupine source holds them, its own 50-client kv histories
(`test_data/kv/c50-ok.txt`, linearizable, and `c50-bad.txt`, not).

For each history the table gives both verdicts, the expected one, both
median times and the ratio ours / porcupine. The bound is at most 2x
porcupine's time, for histories porcupine needs more than 5 ms for (below
that both are quick and the ratio is noise).

It installs nothing: without Go (`apt-get install golang-go`), the
porcupine source (`git clone https://github.com/anishathalye/porcupine
~/.cache/porcupine`) or the shared histories it says what is missing and
exits 2. The harness is built in a temporary directory. Exit codes: 0 every
verdict agrees and every bounded ratio is at most 2, 1 otherwise, 2
something is missing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPOSITORY))

from jepsen_tests.checker import (  # noqa: E402
    Verdict,
    check_operations,
    model_named,
    operations_from_events,
    read_history,
)
from jepsen_tests.checker.generated_histories import (  # noqa: E402
    ANOMALIES,
    generate_kv_history,
    write_jepsen_edn,
)

HARNESS_DIRECTORY = REPOSITORY / "bench" / "porcupine"
PORCUPINE_MODULE = "github.com/anishathalye/porcupine"
DEFAULT_PORCUPINE_SOURCE = Path.home() / ".cache" / "porcupine"
# The ratio is bounded only where porcupine needs more than this.
BOUNDED_ABOVE_SECONDS = 0.005
RATIO_MAX = 2.0
# A check that takes longer than this is given up as unknown, by either checker.
CHECK_BUDGET_SECONDS = 120.0
INDETERMINATE_SHARES = (0.0, 0.05)
FORMAT_AND_MODEL_OF_DIRECTORY = {"etcd": ("jepsen-log", "register"), "kv": ("jepsen-edn", "kv")}
PORCUPINE_LARGE_KV = {"c50-ok.txt": True, "c50-bad.txt": False}


@dataclass(frozen=True)
class History:
    name: str
    path: Path
    history_format: str
    model_name: str
    linearizable: bool


@dataclass
class Row:
    history: str
    operations: int
    expected: str
    porcupine_verdict: str
    ours_verdict: str
    porcupine_ms: float
    ours_ms: float
    ratio: float
    bounded: bool
    passed: bool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--porcupine-source", type=Path, default=None,
                        help=f"porcupine checkout (default $PORCUPINE_SOURCE, else {DEFAULT_PORCUPINE_SOURCE})")
    parser.add_argument("--repeat", type=int, default=5, help="checks per history per checker (median taken)")
    parser.add_argument("--seeds", default="1,2,3", help="seeds of the generated histories, comma separated")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    arguments = parser.parse_args(argv)
    if arguments.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        seeds = [int(seed) for seed in arguments.seeds.split(",") if seed.strip()]
    except ValueError:
        parser.error("--seeds must be integers separated by commas")

    source = arguments.porcupine_source or Path(os.environ.get("PORCUPINE_SOURCE", DEFAULT_PORCUPINE_SOURCE))
    shared = _shared_histories_directory()
    missing = _missing(source, shared)
    if missing:
        for line in missing:
            print(f"porcupine_compare: missing: {line}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="porcupine-compare-") as work:
        work_directory = Path(work)
        harness = _build_harness(source, work_directory / "build")
        histories = _shared_histories(shared) + _porcupine_large_histories(source)
        histories += _generated_histories(work_directory / "generated", seeds)
        porcupine_results = _run_porcupine(harness, histories, arguments.repeat)
        rows = [_compare(history, porcupine_results[str(history.path)], arguments.repeat) for history in histories]
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "python": platform.python_version(),
        "go": subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip(),
        "porcupine_commit": _commit_of(source),
        "repeat": arguments.repeat,
        "rows": [asdict(row) for row in rows],
        "passed": all(row.passed for row in rows),
    }
    if arguments.json:
        print(json.dumps(report, indent=1))
    else:
        _print_table(report, rows)
    return 0 if report["passed"] else 1


def _shared_histories_directory() -> Path:
    override = os.environ.get("KVSVR_SHARED_DIR")
    if override:
        return Path(override) / "histories"
    return (REPOSITORY / ".." / "shared" / "histories").resolve()


def _missing(source: Path, shared: Path) -> list[str]:
    """What is needed and not there, each with how to get it."""
    missing = []
    if shutil.which("go") is None:
        missing.append("go (the Go toolchain) is not on PATH: apt-get install golang-go")
    go_mod = source / "go.mod"
    if not go_mod.is_file() or f"module {PORCUPINE_MODULE}" not in go_mod.read_text(errors="replace"):
        missing.append(
            f"porcupine source not found at {source}: "
            f"git clone https://github.com/anishathalye/porcupine {source} (or pass --porcupine-source DIR)"
        )
    if not (shared / "verdicts.tsv").is_file():
        missing.append(f"the shared reference histories at {shared} (verdicts.tsv); set KVSVR_SHARED_DIR")
    return missing


def _build_harness(source: Path, build_directory: Path) -> Path:
    build_directory.mkdir(parents=True)
    for name in ("main.go", "go.mod"):
        shutil.copy(HARNESS_DIRECTORY / name, build_directory / name)
    environment = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off")
    commands = [
        ["go", "mod", "edit", f"-replace={PORCUPINE_MODULE}={source.resolve()}"],
        ["go", "build", "-o", "porcupine-check", "."],
    ]
    for command in commands:
        done = subprocess.run(command, cwd=build_directory, env=environment, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"porcupine_compare: {' '.join(command)} failed:\n{done.stderr}")
    return build_directory / "porcupine-check"


def _shared_histories(shared: Path) -> list[History]:
    histories = []
    for line in (shared / "verdicts.tsv").read_text().splitlines()[1:]:
        if not line.strip():
            continue
        relative_path, verdict = line.split("\t")
        history_format, model_name = FORMAT_AND_MODEL_OF_DIRECTORY[relative_path.split("/")[0]]
        histories.append(
            History(relative_path, shared / relative_path, history_format, model_name, verdict.strip() == "true")
        )
    return histories


def _porcupine_large_histories(source: Path) -> list[History]:
    return [
        History(f"porcupine kv/{name}", source / "test_data" / "kv" / name, "jepsen-edn", "kv", linearizable)
        for name, linearizable in PORCUPINE_LARGE_KV.items()
        if (source / "test_data" / "kv" / name).is_file()
    ]


def _generated_histories(directory: Path, seeds: list[int]) -> list[History]:
    directory.mkdir(parents=True)
    histories = []
    for seed in seeds:
        for share in INDETERMINATE_SHARES:
            for anomaly in (None, *ANOMALIES):
                generated = generate_kv_history(seed, anomaly=anomaly, indeterminate_share=share)
                name = f"generated/s{seed}-{anomaly or 'linearizable'}-info{round(share * 100)}"
                path = directory / (name.split("/")[1] + ".txt")
                write_jepsen_edn(path, generated.events)
                histories.append(History(name, path, "jepsen-edn", "kv", generated.linearizable))
    return histories


def _run_porcupine(harness: Path, histories: list[History], repeat: int) -> dict[str, dict]:
    results = {}
    for model_name in sorted({history.model_name for history in histories}):
        paths = [str(history.path) for history in histories if history.model_name == model_name]
        command = [str(harness), "-model", model_name, "-repeat", str(repeat),
                   "-timeout-seconds", str(CHECK_BUDGET_SECONDS), *paths]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"porcupine_compare: the porcupine harness failed:\n{done.stderr}")
        for line in done.stdout.splitlines():
            result = json.loads(line)
            results[result["file"]] = result
    return results


def _compare(history: History, porcupine_result: dict, repeat: int) -> Row:
    operations = operations_from_events(read_history(history.path, history.history_format), str(history.path))
    model = model_named(history.model_name)
    seconds = []
    for _ in range(repeat):
        result = check_operations(operations, model, budget_seconds=CHECK_BUDGET_SECONDS)
        seconds.append(result.seconds)
    expected = Verdict.LINEARIZABLE.value if history.linearizable else Verdict.NOT_LINEARIZABLE.value
    porcupine_seconds = statistics.median(porcupine_result["seconds"])
    ours_seconds = statistics.median(seconds)
    ratio = ours_seconds / porcupine_seconds if porcupine_seconds > 0 else float("inf")
    bounded = porcupine_seconds > BOUNDED_ABOVE_SECONDS
    verdicts_agree = result.verdict.value == porcupine_result["verdict"] == expected
    return Row(
        history=history.name,
        operations=len(operations),
        expected=expected,
        porcupine_verdict=porcupine_result["verdict"],
        ours_verdict=result.verdict.value,
        porcupine_ms=round(porcupine_seconds * 1000, 2),
        ours_ms=round(ours_seconds * 1000, 2),
        ratio=round(ratio, 2),
        bounded=bounded,
        passed=verdicts_agree and (not bounded or ratio <= RATIO_MAX),
    )


def _commit_of(source: Path) -> str:
    done = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def _print_table(report: dict, rows: list[Row]) -> None:
    print(f"{report['date']}, load average {' '.join(str(load) for load in report['load_average'])}, "
          f"Python {report['python']}, {report['go']}, porcupine {report['porcupine_commit']}, "
          f"median of {report['repeat']}")
    print("| history | ops | verdict (expected) | porcupine | ours | porcupine ms | ours ms | ours/porcupine | |")
    print("|---|---:|---|---|---|---:|---:|---:|---|")
    for row in rows:
        mark = ("ok" if row.passed else "MISSED") if row.bounded else ("ok" if row.passed else "MISSED") + " (under 5 ms)"
        print(f"| {row.history} | {row.operations} | {row.expected} | {row.porcupine_verdict} | {row.ours_verdict} "
              f"| {row.porcupine_ms:,.2f} | {row.ours_ms:,.2f} | {row.ratio:.2f} | {mark} |")
    bounded = [row for row in rows if row.bounded]
    print(f"{len(rows)} histories; verdicts agree on {sum(row.ours_verdict == row.porcupine_verdict == row.expected for row in rows)}; "
          f"{len(bounded)} over 5 ms for porcupine, {sum(row.passed for row in bounded)} of them within {RATIO_MAX:g}x")


if __name__ == "__main__":
    sys.exit(main())
