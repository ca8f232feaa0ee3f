"""Reading and writing histories, and what bad input gets: a HistoryError naming the place."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from checker_test_support import STALE_READ_TEXT, check_text, events_from_text

from jepsen_tests.checker import (
    Event,
    HistoryError,
    HistoryWriter,
    Verdict,
    check_events,
    model_named,
    operations_from_events,
    read_history,
)
from jepsen_tests.checker.edn import EdnError, Keyword, parse_edn
from jepsen_tests.checker.history import detect_format, parse_history_lines
from jepsen_tests.checker.timeline import render_timeline

# --- our JSON-lines format ---------------------------------------------------------


def test_history_writer_output_reads_back_as_the_same_events(tmp_path) -> None:
    ticks = itertools.count(1000, 10)
    path = tmp_path / "history.jsonl"
    with HistoryWriter(path, clock=lambda: next(ticks)) as writer:
        written = [
            writer.invoke(0, "cas", "k1", [None, 1]),
            writer.invoke(1, "read", "k1"),
            writer.ok(0, "cas", "k1", [None, 1]),
            writer.ok(1, "read", "k1", 1),
            writer.invoke(2, "write", "k2", "v"),
            writer.info(2, "write", "k2"),
        ]
    assert read_history(path) == written
    assert read_history(path, "jsonl") == written
    result = check_events(written, model_named("register"))
    assert result.verdict is Verdict.LINEARIZABLE
    assert {key_result.key for key_result in result.key_results} == {"k1", "k2"}


def test_events_without_time_take_their_line_order() -> None:
    lines = [
        '{"process": 0, "type": "invoke", "f": "write", "value": 1}',
        '{"process": 0, "type": "ok", "f": "write", "value": 1}',
    ]
    events = parse_history_lines(lines, "jsonl")
    assert [event.time for event in events] == [0, 1]
    assert events[0].key is None


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ('{"process": 0, "type": "invoke"', "not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"type": "invoke", "f": "read"}', "no 'process'"),
        ('{"process": 0, "type": "begin", "f": "read"}', "'type' must be one of"),
        ('{"process": 0, "type": "invoke", "f": 7}', "'f' must be a non-empty string"),
        ('{"process": true, "type": "invoke", "f": "read"}', "'process' must be"),
        ('{"process": 0, "type": "invoke", "f": "read", "time": "soon"}', "'time' must be an integer"),
    ],
)
def test_malformed_json_line_is_a_history_error_naming_the_line(line: str, complaint: str) -> None:
    lines = ['{"process": 9, "type": "invoke", "f": "read", "time": 1}', line]
    with pytest.raises(HistoryError, match=rf"h\.jsonl:2: .*{re.escape(complaint)}"):
        parse_history_lines(lines, "jsonl", "h.jsonl")


def test_some_events_with_time_and_some_without_is_refused() -> None:
    lines = [
        '{"process": 0, "type": "invoke", "f": "read", "time": 5}',
        '{"process": 0, "type": "ok", "f": "read", "value": 1}',
    ]
    with pytest.raises(HistoryError, match="some events have a 'time'"):
        parse_history_lines(lines, "jsonl")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("0 ok read 1", "never invoked"),
        ("0 invoke read\n0 invoke write 1", "while its read is pending"),
        ("0 invoke read\n0 ok write 1", "completes write but invoked read"),
        ("0 invoke read key=a\n0 ok read key=b 1", "completes key 'b'"),
    ],
)
def test_events_that_do_not_pair_are_a_history_error(text: str, complaint: str) -> None:
    with pytest.raises(HistoryError, match=complaint):
        operations_from_events(events_from_text(text))


def test_completion_before_its_invocation_is_a_history_error() -> None:
    events = [Event(0, "invoke", "read", None, None, 10), Event(0, "ok", "read", None, 1, 5)]
    with pytest.raises(HistoryError, match="before its invocation"):
        operations_from_events(events)


def test_missing_file_is_a_history_error(tmp_path) -> None:
    with pytest.raises(HistoryError, match="cannot read the file"):
        read_history(tmp_path / "absent.jsonl")


# --- the Jepsen formats ----------------------------------------------------------------

JEPSEN_LOG_LINES = [
    "INFO  jepsen.core - Worker 0 starting",
    "INFO  jepsen.util - 0\t:invoke\t:cas\t[3 0]",
    "INFO  jepsen.util - 1  :invoke :read   nil",
    "INFO  jepsen.util - :nemesis\t:info\t:start\tnil",
    "INFO  jepsen.util - 0\t:fail\t:cas\t[3 0]",
    "INFO  jepsen.util - 1\t:fail\t:read\t:timed-out",
    "INFO  jepsen.util - 2\t:invoke\t:write\t4",
    "INFO  jepsen.util - 2\t:info\t:write\t:timed-out",
]


def test_jepsen_log_reads_client_lines_and_ignores_the_rest() -> None:
    events = parse_history_lines(JEPSEN_LOG_LINES, "jepsen-log")
    assert [(event.process, event.type, event.function, event.value) for event in events] == [
        (0, "invoke", "cas", [3, 0]),
        (1, "invoke", "read", None),
        (0, "fail", "cas", [3, 0]),
        (1, "fail", "read", Keyword("timed-out")),
        (2, "invoke", "write", 4),
        (2, "info", "write", Keyword("timed-out")),
    ]
    operations = operations_from_events(events)
    assert [operation.status for operation in operations] == ["fail", "fail", "info"]
    # The failed cas is kept as a read; the failed read says nothing.
    register = model_named("register")
    assert register.transition(operations[0]) is not None
    assert register.transition(operations[1]) is None


def test_jepsen_edn_reads_maps_with_keys() -> None:
    lines = [
        '{:process 0, :type :invoke, :f :append, :key "3", :value "x 0 0 y"}',
        "{:process :nemesis, :type :info, :f :start, :value nil}",
        '{:process 0, :type :ok, :f :append, :key "3", :value "x 0 0 y"}',
    ]
    events = parse_history_lines(lines, "jepsen-edn")
    assert events == [
        Event(0, "invoke", "append", "3", "x 0 0 y", 1),
        Event(0, "ok", "append", "3", "x 0 0 y", 3),
    ]


def test_jepsen_edn_line_that_is_not_a_map_is_a_history_error() -> None:
    with pytest.raises(HistoryError, match=r"kv:1: .*EDN map"):
        parse_history_lines(["[1 2]"], "jepsen-edn", "kv")
    with pytest.raises(HistoryError, match=r"kv:1: not an EDN map"):
        parse_history_lines(['{:process 0, :type :invoke, :f "'], "jepsen-edn", "kv")


def test_format_is_detected_from_the_first_line() -> None:
    assert detect_format(["", '{"process": 0}']) == "jsonl"
    assert detect_format(["{:process 0}"]) == "jepsen-edn"
    assert detect_format(JEPSEN_LOG_LINES) == "jepsen-log"
    with pytest.raises(HistoryError, match="cannot tell the history format"):
        detect_format(["hello"])


def test_edn_values() -> None:
    assert parse_edn('{:a [1 -2 3.5 nil true] "s\\"q\\n" #{:x}}') == {
        Keyword("a"): [1, -2, 3.5, None, True],
        's"q\n': frozenset({Keyword("x")}),
    }
    assert parse_edn(":ok") != "ok"
    for bad in ("[1 2", "{:a}", "]", "#inst \"2020\"", '"\\q"', "1 2"):
        with pytest.raises(EdnError):
            parse_edn(bad)


# --- models refuse operations they do not have --------------------------------------------


def test_operation_unknown_to_the_model_is_a_history_error() -> None:
    with pytest.raises(HistoryError, match="the register model has no operation 'append'"):
        check_text('0 invoke append "x"\n0 ok append "x"')


def test_cas_without_a_pair_argument_is_a_history_error() -> None:
    with pytest.raises(HistoryError, match=r"a cas argument must be \[expected, new\]"):
        check_text("0 invoke cas 1\n0 ok cas 1")


def test_kv_append_of_a_number_is_a_history_error() -> None:
    with pytest.raises(HistoryError, match="the argument of append must be a string"):
        check_text("0 invoke append key=a 5\n0 ok append key=a 5", "kv")


# --- the timeline ------------------------------------------------------------------------------


def test_timeline_marks_the_failing_operation_and_numbers_the_prefix() -> None:
    result = check_text(STALE_READ_TEXT + "2 invoke write 3")
    assert result.failure is not None
    page = render_timeline(result.key_results[0].operations, result.failure, "stale read")
    svg = page[page.index("<svg"):page.index("</svg>") + len("</svg>")]
    root = ElementTree.fromstring(svg)
    rectangles = root.findall(".//{http://www.w3.org/2000/svg}rect")
    assert len(rectangles) == 4
    failing = [rectangle for rectangle in rectangles if "failing" in rectangle.get("class")]
    assert len(failing) == 1
    labels = [text.text for text in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "1. write 1" in labels and "2. write 2" in labels
    assert "read → 1" in labels
    assert "write 3 ?" in labels
    assert "cannot be linearized" in page


def test_the_example_history_in_the_docs_reads_and_is_linearizable() -> None:
    document = (Path(__file__).resolve().parents[2] / "docs" / "checker.md").read_text()
    example = document.split("```json\n", 1)[1].split("```", 1)[0]
    events = parse_history_lines(example.splitlines(), "jsonl", "docs/checker.md")
    assert len(events) == 6
    assert check_events(events, model_named("register")).verdict is Verdict.LINEARIZABLE


def test_malformed_operation_on_a_later_key_is_found_even_when_an_earlier_key_fails() -> None:
    with pytest.raises(HistoryError, match="a cas argument must be"):
        check_text(STALE_READ_TEXT.replace("1 ok read 1", "1 ok read 1\n2 invoke cas key=b 5\n2 ok cas key=b 5"))
