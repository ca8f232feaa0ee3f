"""bench/etcd_compare.py: it starts, says what is missing, and reports both systems.

These prove the comparison script works end to end, not how fast anything
is (docs/benchmarks.md has the figures): the full run lasts 2 s per
workload on a few keys, and is skipped, saying why, where etcd or aetcd is
not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess

import pytest
from bench_script_support import assert_help_mentions, run_bench_script

RUN_TIMEOUT_SECONDS = 240


def run_script(*arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_bench_script("etcd_compare.py", *arguments, env=env, timeout_seconds=RUN_TIMEOUT_SECONDS)


def test_help_names_the_load_and_what_to_install():
    """--help runs anywhere (nothing imported needs etcd) and says what the script needs."""
    assert_help_mentions("etcd_compare.py", ("--seconds", "--json", "etcd-server", "aetcd"))


def test_without_etcd_it_says_what_to_install_and_exits_2(tmp_path):
    """With no etcd on PATH the script installs nothing: it names the package and exits 2."""
    environment = dict(os.environ, PATH=str(tmp_path))  # an empty directory: no etcd
    result = run_script("--seconds", "1", env=environment)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "apt-get install -y etcd-server" in result.stderr
    assert result.stdout == ""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("etcd") is None,
                    reason="etcd is not installed (apt-get install -y etcd-server)")
@pytest.mark.skipif(importlib.util.find_spec("aetcd") is None,
                    reason="aetcd is not installed (pip install -e '.[bench]')")
def test_a_short_run_reports_both_systems_as_json():
    """Both systems answer every request, with positive throughput, and the ratios follow."""
    result = run_script("--seconds", "2", "--keys", "50", "--concurrency", "4", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["parameters"]["workloads"] == ["put", "get", "mixed"]
    for system in ("etcd", "kvsvr"):
        for workload in ("put", "get", "mixed"):
            figures = report[system][workload]
            assert figures["ops_per_second"] > 0, (system, workload, figures)
            assert figures["errors"] == {}, (system, workload, figures)
            assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
            assert figures["server_cpu_us_per_op"] >= 0
    for workload in ("put", "get", "mixed"):
        assert report["ratios"][workload]["ops_per_second"] > 0
    # The nodes' own counters, per operation: a put sends peer messages and syncs.
    assert report["kvsvr"]["put"]["per_op"]["peer_messages_sent"] > 0
    assert report["kvsvr"]["put"]["per_op"]["syncs"] > 0
