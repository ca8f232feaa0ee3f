"""Running a bench/ script as a subprocess, the way a person would, for its tests.

The scripts are run with this interpreter from the repository root, their
output captured as text, under a timeout so a hung script fails its test
instead of hanging the suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def run_bench_script(
    script_name: str, *arguments: str, env: dict | None = None, timeout_seconds: float
) -> subprocess.CompletedProcess:
    """Run bench/SCRIPT_NAME with these arguments and environment; its exit code and output."""
    return subprocess.run([sys.executable, str(REPOSITORY / "bench" / script_name), *arguments], cwd=REPOSITORY,
                          capture_output=True, text=True, timeout=timeout_seconds, env=env)


def assert_help_mentions(script_name: str, words: tuple[str, ...]) -> None:
    """`--help` runs (nothing it imports needs what the script measures) and names each of `words`."""
    result = run_bench_script(script_name, "--help", timeout_seconds=60)
    assert result.returncode == 0, result.stderr
    for word in words:
        assert word in result.stdout, f"--help of {script_name} does not mention {word!r}"
