"""`python -m jepsen_tests check`: exit 0 linearizable, 1 not, 2 unknown or bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from checker_test_support import shared_histories_directory

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

LINEARIZABLE_HISTORY = """\
{"process": 0, "type": "invoke", "f": "write", "value": 1, "time": 10}
{"process": 1, "type": "invoke", "f": "read", "time": 20}
{"process": 0, "type": "ok", "f": "write", "value": 1, "time": 30}
{"process": 1, "type": "ok", "f": "read", "value": 1, "time": 40}
"""

STALE_READ_HISTORY = """\
{"process": 0, "type": "invoke", "f": "write", "value": 1, "time": 10}
{"process": 0, "type": "ok", "f": "write", "value": 1, "time": 20}
{"process": 1, "type": "invoke", "f": "read", "time": 30}
{"process": 1, "type": "ok", "f": "read", "value": null, "time": 40}
"""


def run_check(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jepsen_tests", "check", *arguments],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_linearizable_history_exits_0(tmp_path) -> None:
    path = tmp_path / "good.jsonl"
    path.write_text(LINEARIZABLE_HISTORY)
    completed = run_check(str(path), "--model", "register")
    assert completed.returncode == 0, completed.stderr
    assert "linearizable" in completed.stdout


def test_stale_read_exits_1_and_writes_a_timeline(tmp_path) -> None:
    path = tmp_path / "stale.jsonl"
    path.write_text(STALE_READ_HISTORY)
    timeline = tmp_path / "stale.html"
    completed = run_check(str(path), "--model", "register", "--format", "jsonl", "--timeline", str(timeline))
    assert completed.returncode == 1, completed.stderr
    assert "not linearizable" in completed.stdout
    assert "read" in completed.stdout
    page = timeline.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert 'class="bar failing"' in page


def test_budget_spent_exits_2_with_unknown(tmp_path) -> None:
    # Twenty concurrent distinct writes and then a read of a value none of
    # them wrote: refuting it means trying every order, far beyond the budget.
    lines = []
    for process in range(20):
        lines.append(f'{{"process": {process}, "type": "invoke", "f": "write", "value": {process}}}')
        lines.append(f'{{"process": {100 + process}, "type": "invoke", "f": "read"}}')
    for process in range(20):
        lines.append(f'{{"process": {process}, "type": "ok", "f": "write", "value": {process}}}')
        lines.append(f'{{"process": {100 + process}, "type": "ok", "f": "read", "value": {(process * 7) % 20}}}')
    lines.append('{"process": 500, "type": "invoke", "f": "read"}')
    lines.append('{"process": 500, "type": "ok", "f": "read", "value": -1}')
    path = tmp_path / "hard.jsonl"
    path.write_text("\n".join(lines) + "\n")
    completed = run_check(str(path), "--model", "register", "--budget-seconds", "0.2")
    assert completed.returncode == 2, completed.stderr
    assert "unknown" in completed.stdout


@pytest.mark.parametrize(
    ("content", "arguments", "complaint"),
    [
        ('{"process": 0, "type": "invoke"\n', ("--model", "register"), "not JSON"),
        ('{"process": 0, "type": "ok", "f": "read", "value": 1}\n', ("--model", "register"), "never invoked"),
        (LINEARIZABLE_HISTORY, ("--model", "kv"), "the kv model has no operation 'write'"),
        ("hello\n", ("--model", "register"), "cannot tell the history format"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path, content, arguments, complaint) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    completed = run_check(str(path), *arguments)
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1, completed.stderr
    assert complaint in completed.stderr
    assert "Traceback" not in completed.stderr


def test_missing_file_exits_2(tmp_path) -> None:
    completed = run_check(str(tmp_path / "absent.jsonl"), "--model", "register")
    assert completed.returncode == 2
    assert "cannot read the file" in completed.stderr


def test_reference_histories_together_exit_1_when_one_is_not_linearizable() -> None:
    directory = shared_histories_directory()
    if not directory.is_dir():
        pytest.skip(f"no shared histories at {directory}")
    paths = sorted(str(path) for path in (directory / "kv").glob("*.txt"))
    completed = run_check(*paths, "--model", "kv", "--format", "jepsen-edn")
    assert completed.returncode == 1, completed.stderr
    assert f"{len(paths)} histories: 2 linearizable, 2 not, 0 unknown" in completed.stdout
