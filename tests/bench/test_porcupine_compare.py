"""bench/porcupine_compare.py: it says what is missing, and exits 2, before doing anything.

The comparison itself (porcupine built from source, every history checked
by both, minutes of work) is a documented run in docs/checker.md, not a
test: these only pin what the script does where Go or the porcupine source
or the shared histories are not there.
"""

from __future__ import annotations

import os
import subprocess

from bench_script_support import assert_help_mentions, run_bench_script

RUN_TIMEOUT_SECONDS = 120


def run_script(*arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_bench_script("porcupine_compare.py", *arguments, env=env, timeout_seconds=RUN_TIMEOUT_SECONDS)


def test_help_says_what_it_compares_and_what_it_needs():
    assert_help_mentions(
        "porcupine_compare.py",
        ("--porcupine-source", "--repeat", "golang-go", "git clone https://github.com/anishathalye/porcupine"),
    )


def test_without_go_or_porcupine_or_histories_it_names_each_and_exits_2(tmp_path):
    """An empty PATH (no go), a source directory that does not exist, no shared histories."""
    environment = dict(os.environ, PATH=str(tmp_path), KVSVR_SHARED_DIR=str(tmp_path / "no-shared"))
    result = run_script("--porcupine-source", str(tmp_path / "no-porcupine"), env=environment)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "apt-get install golang-go" in result.stderr
    assert f"git clone https://github.com/anishathalye/porcupine {tmp_path / 'no-porcupine'}" in result.stderr
    assert "shared reference histories" in result.stderr
    assert result.stdout == ""


def test_a_directory_that_is_not_porcupine_is_refused(tmp_path):
    (tmp_path / "go.mod").write_text("module example.com/other\n")
    result = run_script("--porcupine-source", str(tmp_path))
    assert result.returncode == 2
    assert f"porcupine source not found at {tmp_path}" in result.stderr
