"""Hand-made histories that pin down what the checker must accept and reject.

Each history is small enough to decide by eye; the comment above it says
why the verdict is what it is.
"""

from __future__ import annotations

import json
import time

from checker_test_support import STALE_READ_TEXT, check_text

from jepsen_tests.checker import Event, Verdict, check_events, linearizability, model_named


def assert_linearizable(text: str, model_name: str = "register") -> None:
    result = check_text(text, model_name)
    assert result.verdict is Verdict.LINEARIZABLE, result.describe()


def assert_not_linearizable(text: str, model_name: str = "register"):
    result = check_text(text, model_name)
    assert result.verdict is Verdict.NOT_LINEARIZABLE, result.describe()
    assert result.failure is not None
    return result.failure


# --- indeterminate operations ------------------------------------------------


def test_indeterminate_write_that_took_effect_explains_a_later_read() -> None:
    # The write timed out, yet the read after it saw its value: it happened.
    assert_linearizable("""
        0 invoke write 1
        0 ok write 1
        1 invoke write 2
        1 info write
        0 invoke read
        0 ok read 2
    """)


def test_indeterminate_write_that_never_took_effect_is_allowed() -> None:
    # The write timed out and nobody ever saw it: it never happened.
    assert_linearizable("""
        0 invoke write 1
        0 ok write 1
        1 invoke write 2
        1 info write
        0 invoke read
        0 ok read 1
        0 invoke read
        0 ok read 1
    """)


def test_indeterminate_write_may_take_effect_long_after_its_info() -> None:
    # The request was still in flight when the client gave up on it.
    assert_linearizable("""
        1 invoke write 2
        1 info write
        0 invoke read
        0 ok read null
        0 invoke read
        0 ok read 2
    """)


def test_invocation_never_completed_is_indeterminate() -> None:
    assert_linearizable("""
        1 invoke write 2
        0 invoke read
        0 ok read null
        0 invoke read
        0 ok read 2
    """)


def test_indeterminate_write_cannot_take_effect_before_its_invocation() -> None:
    failure = assert_not_linearizable("""
        0 invoke read
        0 ok read 2
        1 invoke write 2
        1 info write
    """)
    assert failure.operation.function == "read"


def test_indeterminate_write_cannot_be_undone_once_seen() -> None:
    # Once a read saw 2, a later read cannot see the older 1 again.
    assert_not_linearizable("""
        0 invoke write 1
        0 ok write 1
        1 invoke write 2
        1 info write
        0 invoke read
        0 ok read 2
        0 invoke read
        0 ok read 1
    """)


def test_many_identical_indeterminate_writes_are_decided_quickly() -> None:
    # Forty timed-out writes of the same value, then a read that no order
    # explains: without treating them as interchangeable this is 40! work.
    lines = []
    for process in range(40):
        lines.append(f"{process} invoke write 7")
    for process in range(40):
        lines.append(f"{process} info write")
    lines += ["100 invoke read", "100 ok read 8"]
    started = time.perf_counter()
    result = check_text("\n".join(lines))
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert time.perf_counter() - started < 5


# --- reads that cannot be explained ---------------------------------------------


def test_stale_read_is_caught() -> None:
    failure = assert_not_linearizable(STALE_READ_TEXT)
    assert failure.operation.function == "read"
    assert failure.operation.result == 1
    assert failure.state_after_prefix == 2
    assert [operation.argument for operation in failure.longest_prefix] == [1, 2]


def test_read_concurrent_with_a_write_may_see_either_value() -> None:
    assert_linearizable("""
        0 invoke write 1
        0 ok write 1
        0 invoke write 2
        1 invoke read
        2 invoke read
        1 ok read 1
        2 ok read 2
        0 ok write 2
    """)


def test_lost_write_on_a_register_is_caught() -> None:
    assert_not_linearizable("""
        0 invoke write 1
        0 ok write 1
        1 invoke read
        1 ok read null
    """)


def test_lost_append_on_a_kv_key_is_caught() -> None:
    failure = assert_not_linearizable(
        """
        0 invoke put key=k "a"
        0 ok put key=k "a"
        0 invoke append key=k "b"
        0 ok append key=k "b"
        1 invoke get key=k
        1 ok get key=k "a"
        """,
        "kv",
    )
    assert failure.key == "k"
    assert failure.state_after_prefix == "ab"


def test_lost_append_on_a_table_is_caught() -> None:
    assert_not_linearizable(
        """
        0 invoke append "m1"
        0 ok append "m1"
        0 invoke append "m2"
        0 ok append "m2"
        1 invoke read
        1 ok read ["m1"]
        """,
        "table-append",
    )


def test_duplicated_append_is_caught() -> None:
    # One acknowledged append must appear exactly once.
    failure = assert_not_linearizable(
        """
        0 invoke append "m1"
        0 ok append "m1"
        1 invoke read
        1 ok read ["m1", "m1"]
        """,
        "table-append",
    )
    assert failure.operation.function == "read"


def test_two_readers_seeing_appends_in_different_orders_is_caught() -> None:
    assert_not_linearizable(
        """
        0 invoke append "a"
        1 invoke append "b"
        0 ok append "a"
        1 ok append "b"
        2 invoke read
        2 ok read ["a", "b"]
        3 invoke read
        3 ok read ["b", "a"]
        """,
        "table-append",
    )


def test_sync_returns_the_entries_after_the_callers_position() -> None:
    assert_linearizable(
        """
        0 invoke append "a"
        0 ok append "a"
        0 invoke append "b"
        0 ok append "b"
        1 invoke sync 1
        1 ok sync ["b"]
        1 invoke sync 2
        1 ok sync []
        """,
        "table-append",
    )


def test_sync_that_misses_an_acknowledged_append_is_caught() -> None:
    assert_not_linearizable(
        """
        0 invoke append "a"
        0 ok append "a"
        0 invoke append "b"
        0 ok append "b"
        1 invoke sync 1
        1 ok sync []
        """,
        "table-append",
    )


def test_retried_append_that_timed_out_may_appear_twice() -> None:
    # Two distinct append operations of the same entry, the first timed out:
    # both may have happened, so two copies are explained.
    assert_linearizable(
        """
        0 invoke append "m1"
        0 info append
        1 invoke append "m1"
        1 ok append "m1"
        2 invoke read
        2 ok read ["m1", "m1"]
        """,
        "table-append",
    )


def test_many_timed_out_appends_nobody_read_are_decided_quickly() -> None:
    # Thirty appends time out and are never read, between reads that pin the
    # others: each could still happen at any later moment, so without
    # leaving them out the search doubles with every one.
    lines = []
    table = []
    for round_number in range(30):
        lines += [f'{100 + round_number} invoke append "lost{round_number}"', f"{100 + round_number} info append"]
        lines += [f'0 invoke append "m{round_number}"', f'0 ok append "m{round_number}"']
        table.append(f"m{round_number}")
        lines += ["1 invoke read", f"1 ok read {json.dumps(table)}"]
    lines += ["1 invoke read", f'1 ok read {json.dumps(table + ["never appended"])}']
    started = time.perf_counter()
    result = check_text("\n".join(lines), "table-append")
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert time.perf_counter() - started < 5


def test_many_timed_out_kv_appends_nobody_read_are_left_out() -> None:
    # The kv model's version of the rule above: thirty appends time out and
    # no get ever returns their strings, so they cannot have happened before
    # any get; left in, each would double the search.
    lines = []
    value = ""
    for round_number in range(30):
        lines += [f'{100 + round_number} invoke append key=k "lost{round_number};"', f"{100 + round_number} info append key=k"]
        lines += [f'0 invoke append key=k "m{round_number};"', f'0 ok append key=k "m{round_number};"']
        value += f"m{round_number};"
        lines += ["1 invoke get key=k", f"1 ok get key=k {json.dumps(value)}"]
    lines += ["1 invoke get key=k", f'1 ok get key=k {json.dumps(value + "never;")}']
    result = check_text("\n".join(lines), "kv", budget_steps=1_000_000)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.steps < 20_000


def test_a_timed_out_kv_append_somebody_read_is_kept() -> None:
    # The timed-out append's string shows up in a later get, so it happened.
    assert_linearizable("""
        0 invoke append key=k "a"
        0 info append key=k
        1 invoke get key=k
        1 ok get key=k "a"
    """, "kv")
    assert_not_linearizable("""
        0 invoke append key=k "a"
        0 info append key=k
        1 invoke get key=k
        1 ok get key=k "a"
        1 invoke get key=k
        1 ok get key=k ""
    """, "kv")


def test_timed_out_cas_that_change_nothing_are_never_placed() -> None:
    # Thirty timed-out cas expect a value nobody writes, so each does nothing
    # wherever it goes: a configuration with one placed is dominated by the
    # same one without it. Without that, every subset of them is explored
    # before the last read is found impossible.
    lines = [f"{process} invoke cas [99, {process}]" for process in range(30)]
    for value in range(30):
        lines += [f"100 invoke write {value}", f"100 ok write {value}", "100 invoke read", f"100 ok read {value}"]
    lines += ["100 invoke read", "100 ok read 99"]
    result = check_text("\n".join(lines), budget_steps=1_000_000)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.steps < 20_000


# --- compare-and-set ---------------------------------------------------------------


def test_two_concurrent_cas_from_the_same_value_cannot_both_succeed() -> None:
    assert_not_linearizable("""
        0 invoke write 0
        0 ok write 0
        1 invoke cas [0, 1]
        2 invoke cas [0, 2]
        1 ok cas [0, 1]
        2 ok cas [0, 2]
    """)


def test_concurrent_cas_one_wins_and_the_other_fails() -> None:
    assert_linearizable("""
        0 invoke write 0
        0 ok write 0
        1 invoke cas [0, 1]
        2 invoke cas [0, 2]
        1 ok cas [0, 1]
        2 fail cas [0, 2]
        0 invoke read
        0 ok read 1
    """)


def test_concurrent_cas_that_chain_both_succeed() -> None:
    assert_linearizable("""
        0 invoke write 0
        0 ok write 0
        2 invoke cas [1, 2]
        1 invoke cas [0, 1]
        2 ok cas [1, 2]
        1 ok cas [0, 1]
        0 invoke read
        0 ok read 2
    """)


def test_failed_cas_is_a_read_that_saw_another_value() -> None:
    # Nothing else ran, the register held 0, so a cas expecting 0 cannot fail.
    failure = assert_not_linearizable("""
        0 invoke write 0
        0 ok write 0
        1 invoke cas [0, 1]
        1 fail cas [0, 1]
    """)
    assert failure.operation.status == "fail"


def test_indeterminate_cas_may_or_may_not_have_swapped() -> None:
    for seen in (0, 1):
        assert_linearizable(f"""
            0 invoke write 0
            0 ok write 0
            1 invoke cas [0, 1]
            1 info cas
            0 invoke read
            0 ok read {seen}
        """)


def test_failed_write_did_not_happen() -> None:
    assert_not_linearizable("""
        0 invoke write 1
        0 fail write 1
        1 invoke read
        1 ok read 1
    """)


# --- keys, explanations and budgets -------------------------------------------------


def test_keys_are_checked_apart_and_the_failing_key_is_named() -> None:
    failure = assert_not_linearizable(
        """
        0 invoke put key=a "x"
        1 invoke put key=b "y"
        0 ok put key=a "x"
        1 ok put key=b "y"
        0 invoke get key=a
        0 ok get key=a "x"
        1 invoke get key=b
        1 ok get key=b "x"
        """,
        "kv",
    )
    assert failure.key == "b"
    assert "key 'b'" in failure.describe()


def test_a_key_that_fails_quickly_ends_the_check_beside_one_that_cannot_be_decided() -> None:
    # Keys are searched side by side: the pathological key below would take
    # longer than any test, but the stale read on the other key fails within
    # its first slice, and that ends the check.
    slow = [
        Event(event.process, event.type, event.function, "slow", event.value, event.time)
        for event in _pathological_history()
    ]
    start = len(slow)
    quick = [
        Event(900, "invoke", "write", "quick", 1, start),
        Event(900, "ok", "write", "quick", 1, start + 1),
        Event(900, "invoke", "write", "quick", 2, start + 2),
        Event(900, "ok", "write", "quick", 2, start + 3),
        Event(901, "invoke", "read", "quick", None, start + 4),
        Event(901, "ok", "read", "quick", 1, start + 5),
    ]
    result = check_events(slow + quick, model_named("register"), budget_steps=10_000_000)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.failure is not None and result.failure.key == "quick"
    verdict_of_key = {key_result.key: key_result.verdict for key_result in result.key_results}
    assert verdict_of_key == {"slow": Verdict.UNKNOWN, "quick": Verdict.NOT_LINEARIZABLE}
    assert result.steps <= 2 * linearizability.steps_between_clock_checks


def test_empty_history_is_linearizable() -> None:
    assert check_events([], model_named("register")).verdict is Verdict.LINEARIZABLE


def _pathological_history() -> list[Event]:
    # Twenty concurrent writes of distinct values interleaved with twenty
    # concurrent reads of them, then a read of a value nobody wrote: every
    # order of writes and reads must be refuted before the answer is no.
    events = []
    for process in range(20):
        events.append(Event(process, "invoke", "write", None, process, len(events)))
        events.append(Event(100 + process, "invoke", "read", None, None, len(events)))
    for process in range(20):
        events.append(Event(process, "ok", "write", None, process, len(events)))
        events.append(Event(100 + process, "ok", "read", None, (process * 7) % 20, len(events)))
    events.append(Event(500, "invoke", "read", None, None, len(events)))
    events.append(Event(500, "ok", "read", None, -1, len(events)))
    return events


def test_time_budget_answers_unknown_quickly_on_a_pathological_history() -> None:
    started = time.perf_counter()
    result = check_events(_pathological_history(), model_named("register"), budget_seconds=0.2)
    elapsed = time.perf_counter() - started
    assert result.verdict is Verdict.UNKNOWN
    assert result.unknown_keys == (None,)
    assert result.failure is None
    assert elapsed < 2.0


def test_step_budget_answers_unknown_after_that_many_steps() -> None:
    result = check_events(_pathological_history(), model_named("register"), budget_steps=10_000)
    assert result.verdict is Verdict.UNKNOWN
    assert 10_000 <= result.steps <= 10_000 + 4096


def test_memory_cap_answers_unknown(monkeypatch) -> None:
    monkeypatch.setattr(linearizability, "explored_configurations_max", 1000)
    result = check_events(_pathological_history(), model_named("register"))
    assert result.verdict is Verdict.UNKNOWN
