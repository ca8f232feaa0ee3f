"""`kvctl bench` and `kvctl bench-echo`: short runs that must report parsable figures.

These prove the benchmark commands work end to end, not how fast anything
is (docs/benchmarks.md has the figures): each run lasts a fraction of a
second at low concurrency.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.bench import Recorder, Report, percentile
from cli.kvctl import main
from jepsen_tests.nodes import free_port

SHORT_RUN = ["--concurrency", "4", "--duration", "0.5"]


def bench_json(*arguments: str) -> dict:
    result = CliRunner().invoke(main, ["--json", *arguments])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("workload", ["put", "get", "mixed"])
def test_bench_reports_throughput_and_latency(node_process, workload):
    report = bench_json("--cluster", node_process.address, "bench", "--workload", workload,
                        "--keys", "200", "--connections", "2", *SHORT_RUN)
    assert report["workload"] == workload
    assert report["operations"] > 0 and report["ops_per_second"] > 0
    assert report["errors"] == {} and report["misses"] == 0  # gets find preloaded keys
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["p999"] <= latency["max"]
    assert ("preload_seconds" in report) == (workload != "put")
    assert ("latency_ms_get" in report and "latency_ms_put" in report) == (workload == "mixed")


def test_bench_echo_reports_round_trips():
    report = bench_json("bench-echo", "--connections", "2", *SHORT_RUN)
    assert report["workload"] == "echo" and report["ops_per_second"] > 0
    assert report["errors"] == {}


def test_bench_against_no_node_exits_4():
    result = CliRunner().invoke(
        main, ["--cluster", f"127.0.0.1:{free_port()}", "bench", *SHORT_RUN])
    assert result.exit_code == 4, result.output
    assert result.stderr.startswith("kvctl: unavailable")


def testpercentiles_are_nearest_rank():
    samples = [index / 1000 for index in range(1, 1001)]  # 1 ms .. 1000 ms
    assert percentile(samples, 0.5) == pytest.approx(500)
    assert percentile(samples, 0.99) == pytest.approx(990)
    assert percentile(samples, 0.999) == pytest.approx(999)
    assert percentile([], 0.5) is None
    empty = Report("nothing", {}, Recorder())
    assert empty.ops_per_second == 0 and empty.latency_ms()["p50"] is None


def test_bench_against_a_group_reports_the_fast_path_share(tmp_path):
    """Against a replica group every acknowledged put is counted once, by the
    node that coordinated it, on the path it took; the report gives the share."""
    from jepsen_tests.nodes import GroupProcesses

    group = GroupProcesses(tmp_path / "group").start()
    try:
        report = bench_json("--cluster", group.addresses, "bench", "--workload", "put",
                            "--keys", "20", *SHORT_RUN)
    finally:
        group.kill_all()
    assert report["errors"] == {}
    paths = report["writes_by_path"]
    assert sum(paths.values()) == report["operations"]
    # Each key is written through its one preferred coordinator, which
    # prepares once and keeps its promise: however many puts a short run gets
    # through (few on a busy machine), the prepared ones are bounded by the
    # keys, not by the run, and every other put took the fast path.
    assert paths.get("prepared", 0) <= 20 * 3
    assert paths.get("fast_path", 0) == report["operations"] - paths.get("prepared", 0)
    assert report["fast_path_share"] == round(paths.get("fast_path", 0) / report["operations"], 4)
