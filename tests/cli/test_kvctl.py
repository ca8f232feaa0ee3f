"""kvctl against a real node: results, JSON shapes and the stable exit codes.

Each test drives the click command in-process (CliRunner) against a node
subprocess, and checks what a script relies on: stdout (JSON where asked),
one readable line on stderr for a failure, and the exit code.
"""

from __future__ import annotations

import json
import socket

import trio
from click.testing import CliRunner, Result

from cli.kvctl import (
    EXIT_CONDITION_FAILED,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    main,
)
from jepsen_tests.nodes import free_port
from kvsvr.client import Client
from kvsvr.protocol.limits import DEFAULT_LIMITS


def kvctl(address: str, *arguments: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(main, ["--cluster", address, *arguments], input=stdin)


def kvctl_json(address: str, *arguments: str) -> dict:
    result = kvctl(address, "--json", *arguments)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, exit_code: int, *phrases: str) -> None:
    """The failure is exactly one `kvctl: ...` line on stderr, with no traceback."""
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvctl: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert "Traceback" not in result.output


def put_many(address: str, pairs: list[tuple[bytes, bytes]]) -> None:
    """Write many keys quickly (pipelined), for tests that need a large range."""

    async def write_all() -> None:
        async with Client(address) as client, trio.open_nursery() as nursery:
            for key, value in pairs:
                nursery.start_soon(client.put, key, value)

    trio.run(write_all)


def test_put_get_cas_delete_round_trip_as_json(node_process):
    address = node_process.address
    assert kvctl_json(address, "put", "greeting", "hello") == {"key": "greeting", "version": 1}
    assert kvctl_json(address, "get", "greeting") == {
        "key": "greeting", "value": "hello", "version": 1}
    assert kvctl_json(address, "cas", "greeting", "hi", "--expected-version", "1")["version"] == 2
    assert kvctl(address, "get", "greeting").stdout == "hi\n"
    assert kvctl_json(address, "delete", "greeting") == {"key": "greeting", "version": 3}

    missing = kvctl(address, "--json", "get", "greeting")
    assert_one_line_error(missing, EXIT_NOT_FOUND, "not found", "greeting")
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"


def test_cas_on_a_stale_version_exits_3_and_names_the_current_version(node_process):
    address = node_process.address
    kvctl_json(address, "put", "counter", "1")
    kvctl_json(address, "put", "counter", "2")
    stale = kvctl(address, "--json", "cas", "counter", "3", "--expected-version", "1")
    assert_one_line_error(stale, EXIT_CONDITION_FAILED, "condition failed", "current version 2")
    assert json.loads(stale.stdout)["error"] == {
        "code": "condition_failed",
        "message": "expected version 1 of b'counter', found 2",
        "version": 2,
    }
    assert kvctl_json(address, "get", "counter")["value"] == "2"  # nothing was stored


def test_unreachable_node_exits_4_without_a_traceback():
    closed = f"127.0.0.1:{free_port()}"
    result = kvctl(closed, "put", "k", "v")
    assert_one_line_error(result, EXIT_UNAVAILABLE, "unavailable", "did not happen")


def test_unanswered_request_exits_5_and_says_the_outcome_is_unknown():
    # A listener that never accepts: the kernel completes the connection,
    # the request is sent, and no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = "127.0.0.1:%d" % silent.getsockname()[1]
        result = kvctl(address, "--timeout", "0.3", "put", "k", "v")
    assert_one_line_error(result, EXIT_TIMEOUT, "outcome unknown", "may or may not")


def test_usage_errors_exit_2():
    address = f"127.0.0.1:{free_port()}"  # never reached: usage is checked first
    for arguments in (
        ["put", "only-a-key"],
        ["cas", "k", "v"],  # --expected-version is required
        ["scan", "--prefix", "a", "--start", "b"],
        ["--hex", "get", "not-hex"],
        ["table", "write", "t"],  # nothing to write
        ["table", "write", "t", "--put", "no-equals-sign"],
        ["bench", "--workload", "sideways"],
    ):
        result = kvctl(address, *arguments)
        assert result.exit_code == EXIT_USAGE, (arguments, result.output)
        assert "Traceback" not in result.output
    assert CliRunner().invoke(main, ["--cluster", "no-port", "get", "k"]).exit_code == EXIT_USAGE


def test_other_errors_from_the_node_exit_6(node_process):
    address = node_process.address
    kvctl_json(address, "table", "append", "room", "hello")
    wrong_kind = kvctl(address, "get", "room")
    assert_one_line_error(wrong_kind, EXIT_ERROR, "bad request", "table")
    oversized = "x" * (DEFAULT_LIMITS.value_size_max_bytes + 1)
    assert_one_line_error(kvctl(address, "put", "big", oversized), EXIT_ERROR, "too large")


def test_cluster_comes_from_the_environment(node_process):
    result = CliRunner().invoke(
        main, ["put", "from-env", "yes"], env={"KVSVR_CLUSTER": node_process.address}
    )
    assert result.exit_code == 0, result.output
    assert kvctl_json(node_process.address, "get", "from-env")["value"] == "yes"


def test_bytes_from_stdin_and_hex_output(node_process):
    address = node_process.address
    binary = b"\xff\x00\x01not utf-8"
    assert kvctl(address, "put", "blob", "-", stdin=binary).exit_code == 0
    assert kvctl_json(address, "get", "blob")["value"] == {"hex": binary.hex()}
    assert kvctl(address, "get", "blob").stdout == f"hex:{binary.hex()}\n"
    assert kvctl(address, "get", "blob", "--raw").stdout_bytes == binary
    hex_get = kvctl(address, "--hex", "--json", "get", b"blob".hex())
    assert json.loads(hex_get.stdout) == {
        "key": {"hex": b"blob".hex()}, "value": {"hex": binary.hex()}, "version": 1}


def test_table_append_write_sync_rows_get(node_process):
    address = node_process.address
    assert kvctl(address, "table", "append", "room", "first").stdout == "1\n"
    assert kvctl_json(address, "table", "append", "room", "second") == {
        "key": "room", "row": 2, "version": 2}
    written = kvctl_json(address, "table", "write", "room", "--put", "topic=news", "--delete", "1")
    assert written["version"] == 3

    assert kvctl_json(address, "table", "sync", "room") == {
        "key": "room",
        "version": 3,
        "rows": [
            {"row": 2, "version": 2, "value": "second"},
            {"row": "topic", "version": 3, "value": "news"},
            {"row": 1, "version": 3, "value": None},  # deleted at version 3
        ],
        "more": False,
    }
    assert [row["row"] for row in kvctl_json(address, "table", "sync", "room", "--since", "2")[
        "rows"]] == ["topic", 1]
    paged = kvctl_json(address, "table", "sync", "room", "--limit", "1")
    assert paged["more"] and paged["version"] == 2

    listed = kvctl_json(address, "table", "rows", "room")
    assert [(row["row"], row["value"]) for row in listed["rows"]] == [(2, "second"),
                                                                      ("topic", "news")]
    assert kvctl(address, "table", "rows", "room").stdout == "2\t2\tsecond\ntopic\t3\tnews\n"
    first_page = kvctl_json(address, "table", "rows", "room", "--limit", "1")
    assert [row["row"] for row in first_page["rows"]] == [2]
    rest = kvctl_json(address, "table", "rows", "room", "--resume", first_page["resume"])
    assert [row["row"] for row in rest["rows"]] == ["topic"] and rest["resume"] is None
    assert kvctl_json(address, "table", "get", "room", "2")["value"] == "second"
    assert kvctl(address, "table", "get", "room", "topic").stdout == "news\n"
    assert_one_line_error(kvctl(address, "table", "get", "room", "1"), EXIT_NOT_FOUND, "not found")


def test_scan_with_a_limit_pages_on_with_the_resume_token(node_process):
    address = node_process.address
    put_many(address, [(b"page/%02d" % index, b"v%d" % index) for index in range(25)])
    kvctl_json(address, "put", "other", "outside the prefix")

    seen: list[str] = []
    arguments = ["scan", "--prefix", "page/", "--limit", "10"]
    while True:
        page = kvctl_json(address, *arguments)
        assert len(page["items"]) <= 10
        seen += [item["key"] for item in page["items"]]
        if page["resume"] is None:
            break
        arguments = ["scan", "--prefix", "page/", "--limit", "10", "--resume", page["resume"]]
    assert seen == ["page/%02d" % index for index in range(25)]

    human = kvctl(address, "scan", "--start", "page/00", "--end", "page/02").stdout
    assert human == "page/00\t1\tv0\npage/01\t1\tv1\n"


def test_scan_without_a_limit_returns_every_key_past_the_server_page_size(node_process):
    address = node_process.address
    key_count = DEFAULT_LIMITS.scan_items_max + 50  # more than one server page
    put_many(address, [(b"all/%05d" % index, b"") for index in range(key_count)])
    result = kvctl_json(address, "scan", "--prefix", "all/")
    assert [item["key"] for item in result["items"]] == [
        "all/%05d" % index for index in range(key_count)]
    assert result["resume"] is None


def test_status_reports_the_node(node_process):
    report = kvctl_json(node_process.address, "status")
    assert report["listen"] == [node_process.address]
    assert "writes_applied" in report


def test_help_documents_every_exit_code_and_command():
    text = CliRunner().invoke(main, ["--help"]).stdout
    for line in ("0  ok", "1  not found", "2  usage error", "3  condition failed",
                 "4  unavailable", "5  timeout", "6  any other error"):
        assert line in text
    for command in ("put", "get", "delete", "cas", "scan", "table", "status", "bench"):
        assert CliRunner().invoke(main, [command, "--help"]).exit_code == 0


def test_the_exit_code_table_in_the_docs_is_the_one_kvctl_uses():
    """docs/kvctl.md's table and `kvctl --help` both come from EXIT_MEANINGS."""
    import re
    from pathlib import Path

    from cli.kvctl import EXIT_MEANINGS, main

    text = (Path(__file__).resolve().parents[2] / "docs" / "kvctl.md").read_text()
    section = text[text.index("## Exit codes"):]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section.split("\n\n", 2)[1], re.MULTILINE)
    assert [(int(code), meaning) for code, meaning in rows] == list(EXIT_MEANINGS)
    shown = CliRunner().invoke(main, ["--help"]).output
    for code, meaning in EXIT_MEANINGS:
        assert f"{code}  {meaning}" in shown
