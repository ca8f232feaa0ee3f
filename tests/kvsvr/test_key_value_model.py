"""The Key-Value model on the engine (MemoryStorage): versions, tombstones,
conditions, kinds, and scans."""

from __future__ import annotations

import pytest
from kvsvr_test_support import EngineDriver

from kvsvr.core import model
from kvsvr.protocol.errors import BadRequest, ConditionFailed, NotFound
from kvsvr.protocol.limits import Limits


@pytest.fixture
def store() -> EngineDriver:
    return EngineDriver()


def test_every_mutation_raises_the_version_by_exactly_one(store):
    """Put, put, delete, put on one key answer versions 1, 2, 3, 4, and get sees the last."""
    assert store.do("put", key=b"k", value=b"a")["version"] == 1
    assert store.do("put", key=b"k", value=b"b")["version"] == 2
    assert store.do("delete", key=b"k")["version"] == 3
    assert store.do("put", key=b"k", value=b"c")["version"] == 4
    assert store.do("get", key=b"k") == {"value": b"c", "version": 4}


def test_delete_leaves_a_tombstone_that_keeps_the_version(store):
    """A deleted key is not found, the error carries the tombstone's version, and the
    next write continues from it (versions never go backwards, R3)."""
    store.do("put", key=b"k", value=b"a")
    assert store.do("delete", key=b"k") == {"version": 2, "existed": True}
    with pytest.raises(NotFound) as missing:
        store.do("get", key=b"k")
    assert missing.value.version == 2
    assert store.do("delete", key=b"k") == {"version": 3, "existed": False}
    assert store.do("put", key=b"k", value=b"b")["version"] == 4


def test_a_key_never_written_is_not_found_at_version_zero(store):
    """Version 0 means never written."""
    with pytest.raises(NotFound) as missing:
        store.do("get", key=b"nothing")
    assert missing.value.version == 0


def test_expected_version_condition_applies_only_at_that_version(store):
    """cas at the current version succeeds; at any other it fails carrying the current
    version and changes nothing. Expected version 0 means 'never written'."""
    assert store.do("put", key=b"k", value=b"a", expected_version=0)["version"] == 1
    assert store.do("put", key=b"k", value=b"b", expected_version=1)["version"] == 2
    with pytest.raises(ConditionFailed) as failed:
        store.do("put", key=b"k", value=b"c", expected_version=1)
    assert failed.value.version == 2
    assert failed.value.key == b"k"
    assert store.do("get", key=b"k") == {"value": b"b", "version": 2}


def test_expected_value_condition_compares_the_bytes(store):
    """expected_value must equal the stored value; a mismatch fails with the version."""
    store.do("put", key=b"k", value=b"a")
    assert store.do("put", key=b"k", value=b"b", expected_value=b"a")["version"] == 2
    with pytest.raises(ConditionFailed) as failed:
        store.do("put", key=b"k", value=b"c", expected_value=b"a")
    assert failed.value.version == 2
    assert store.do("get", key=b"k")["value"] == b"b"


def test_expected_value_none_means_the_key_must_hold_no_value(store):
    """expected_value null succeeds on a never-written or deleted key, fails on a live one."""
    assert store.do("put", key=b"k", value=b"a", expected_value=None)["version"] == 1
    with pytest.raises(ConditionFailed) as failed:
        store.do("put", key=b"k", value=b"b", expected_value=None)
    assert failed.value.version == 1
    store.do("delete", key=b"k")
    assert store.do("put", key=b"k", value=b"c", expected_value=None)["version"] == 3


def test_a_conditional_delete_fails_without_writing_a_tombstone(store):
    """delete with a stale expected_version leaves value and version as they were."""
    store.do("put", key=b"k", value=b"a")
    with pytest.raises(ConditionFailed):
        store.do("delete", key=b"k", expected_version=5)
    assert store.do("get", key=b"k") == {"value": b"a", "version": 1}
    assert store.do("delete", key=b"k", expected_version=1)["version"] == 2


def test_both_conditions_must_hold(store):
    """With expected_version and expected_value both given, either failing fails the write."""
    store.do("put", key=b"k", value=b"a")
    with pytest.raises(ConditionFailed):
        store.do("put", key=b"k", value=b"x", expected_version=1, expected_value=b"wrong")
    with pytest.raises(ConditionFailed):
        store.do("put", key=b"k", value=b"x", expected_version=9, expected_value=b"a")
    assert store.do("put", key=b"k", value=b"x", expected_version=1, expected_value=b"a") == {
        "version": 2
    }


def test_kind_mismatch_is_bad_request_and_changes_nothing(store):
    """Key-Value operations on a table (and table operations on a KV key) are bad_request;
    neither key's version or contents change."""
    store.do("put", key=b"kv", value=b"a")
    store.do("append", key=b"table", value=b"row")
    for op, fields in [
        ("put", {"key": b"table", "value": b"x"}),
        ("delete", {"key": b"table"}),
        ("get", {"key": b"table"}),
        ("append", {"key": b"kv", "value": b"x"}),
        ("table_write", {"key": b"kv", "puts": [[b"r", b"x"]]}),
        ("sync", {"key": b"kv"}),
        ("table_get", {"key": b"kv", "row_id": b"r"}),
        ("table_rows", {"key": b"kv"}),
    ]:
        with pytest.raises(BadRequest):
            store.do(op, **fields)
    assert store.do("get", key=b"kv") == {"value": b"a", "version": 1}
    assert store.do("sync", key=b"table")["version"] == 1
    assert store.engine.writes_applied == 2


def test_kind_of_a_deleted_key_value_key_stays_key_value(store):
    """A tombstone keeps the key's kind: appending to a deleted KV key is still bad_request."""
    store.do("put", key=b"k", value=b"a")
    store.do("delete", key=b"k")
    with pytest.raises(BadRequest):
        store.do("append", key=b"k", value=b"x")


def _scan_keys(result: dict) -> list[bytes]:
    return [item[0] for item in result["items"]]


def test_scan_by_prefix_returns_live_keys_in_order(store):
    """A prefix scan returns exactly the live keys with that prefix, sorted, with value,
    version and kind; tombstones are skipped, table keys are listed with kind 'table'."""
    for key in [b"user/3", b"user/1", b"user/2", b"users", b"use", b"zzz"]:
        store.do("put", key=key, value=key.upper())
    store.do("delete", key=b"user/2")
    store.do("append", key=b"user/4", value=b"row")
    result = store.do("scan", prefix=b"user/")
    assert result["items"] == [
        [b"user/1", b"USER/1", 1, "kv"],
        [b"user/3", b"USER/3", 1, "kv"],
        [b"user/4", None, 1, "table"],
    ]
    assert result["resume"] is None


def test_scan_by_range_is_start_inclusive_end_exclusive(store):
    """start <= key < end."""
    for key in [b"a", b"b", b"c", b"d"]:
        store.do("put", key=key, value=b"v")
    assert _scan_keys(store.do("scan", start=b"b", end=b"d")) == [b"b", b"c"]
    assert _scan_keys(store.do("scan", start=b"c")) == [b"c", b"d"]


def test_scan_with_a_limit_resumes_where_it_stopped_and_skips_tombstones(store):
    """Paging with limit 3 over 20 keys, half of them deleted, visits every live key exactly
    once, in order, and ends with resume None."""
    live = []
    for number in range(20):
        key = b"k%02d" % number
        store.do("put", key=key, value=b"v")
        if number % 2:
            store.do("delete", key=key)
        else:
            live.append(key)
    seen, resume, pages = [], None, 0
    while True:
        fields = {"prefix": b"k", "limit": 3}
        if resume is not None:
            fields["resume"] = resume
        result = store.do("scan", **fields)
        assert len(result["items"]) <= 3
        seen += _scan_keys(result)
        pages += 1
        resume = result["resume"]
        if resume is None:
            break
    assert seen == live
    assert pages >= 4


def test_scan_over_a_run_of_tombstones_longer_than_its_budget_still_makes_progress(store):
    """Many tombstones in a row give empty pages with a resume token, never a stall."""
    for number in range(30):
        store.do("put", key=b"d%02d" % number, value=b"v")
        store.do("delete", key=b"d%02d" % number)
    store.do("put", key=b"d99", value=b"last")
    seen, resume = [], None
    for _ in range(40):
        fields = {"prefix": b"d", "limit": 1}
        if resume is not None:
            fields["resume"] = resume
        result = store.do("scan", **fields)
        seen += _scan_keys(result)
        resume = result["resume"]
        if resume is None:
            break
    assert seen == [b"d99"]
    assert resume is None


def test_scan_limit_is_capped_by_scan_items_max():
    """A limit above scan_items_max returns at most scan_items_max items and a resume."""
    store = EngineDriver(limits=Limits(scan_items_max=5))
    for number in range(8):
        store.do("put", key=b"k%d" % number, value=b"v")
    result = store.do("scan", prefix=b"k", limit=100)
    assert len(result["items"]) == 5
    assert result["resume"] is not None


def test_apply_is_deterministic():
    """model.apply depends only on the state and the mutation: the same inputs give
    equal states (every replica applying the same mutations agrees, invariant 4)."""
    state = model.KeyState()
    mutations = [model.Put(b"a"), model.Delete(), model.Put(b"b")]
    first = second = state
    for mutation in mutations:
        first = model.apply(first, mutation).state
        second = model.apply(second, mutation).state
    assert first == second == model.KeyState(3, model.KIND_KEY_VALUE, b"b")
