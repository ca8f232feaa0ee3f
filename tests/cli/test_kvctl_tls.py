"""kvctl against a node serving TLS: `--cacert` (or KVSVR_CACERT) makes it work,
and without it the failure is one clear line and exit 4, at once."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_kvctl import assert_one_line_error

from cli.kvctl import EXIT_UNAVAILABLE, EXIT_USAGE, main
from jepsen_tests.nodes import NodeProcess


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory, tls_files):
    node = NodeProcess(tmp_path_factory.mktemp("tls") / "node", extra_args=(
        "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key))).start()
    yield node
    node.kill()


def kvctl(*arguments: str, env: dict | None = None):
    return CliRunner().invoke(main, list(arguments), env=env)


def test_kvctl_with_cacert_round_trips(tls_node, tls_files):
    cacert = str(tls_files.ca_cert)
    put = kvctl("--cluster", tls_node.address, "--cacert", cacert, "put", "greeting", "hello")
    assert put.exit_code == 0 and put.stdout == "version 1\n", put.output
    get = kvctl("--cluster", tls_node.address, "--cacert", cacert, "get", "greeting")
    assert get.exit_code == 0 and get.stdout == "hello\n", get.output


def test_kvctl_reads_the_cacert_from_the_environment(tls_node, tls_files):
    result = kvctl("status", env={"KVSVR_CLUSTER": tls_node.address,
                                  "KVSVR_CACERT": str(tls_files.ca_cert)})
    assert result.exit_code == 0 and "tls: True" in result.stdout, result.output


def test_kvctl_without_cacert_fails_at_once_saying_the_node_wants_tls(tls_node):
    result = kvctl("--cluster", tls_node.address, "--timeout", "60", "put", "k", "v")
    assert_one_line_error(result, EXIT_UNAVAILABLE, "the operation did not happen",
                          "this node serves TLS only", "--cacert")


def test_kvctl_trusting_another_ca_fails_clearly(tls_node, tls_files):
    result = kvctl("--cluster", tls_node.address, "--cacert", str(tls_files.other_ca_cert),
                   "get", "greeting")
    assert_one_line_error(result, EXIT_UNAVAILABLE, "TLS handshake failed",
                          "certificate verify failed")


def test_a_cacert_that_is_no_certificate_is_a_usage_error(tls_node, tmp_path):
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    result = kvctl("--cluster", tls_node.address, "--cacert", str(bogus), "get", "k")
    assert result.exit_code == EXIT_USAGE and "--cacert" in result.output, result.output


def test_kvctl_bench_runs_over_tls(tls_node, tls_files):
    """bench's clients, and the status calls it makes around the run, use --cacert."""
    result = kvctl("--json", "--cluster", tls_node.address, "--cacert", str(tls_files.ca_cert),
                   "bench", "--workload", "put", "--keys", "10", "--concurrency", "2",
                   "--duration", "0.3")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["errors"] == {} and report["operations"] > 0, report
