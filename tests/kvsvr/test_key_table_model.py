"""The Key-Table model on the engine (MemoryStorage): table writes, appends,
`sync(key, since)` with limits, row reads and row paging."""

from __future__ import annotations

import pytest
from kvsvr_test_support import EngineDriver

from kvsvr.core import records
from kvsvr.protocol.errors import BadRequest, ConditionFailed, NotFound, TooLarge
from kvsvr.protocol.limits import Limits


@pytest.fixture
def store() -> EngineDriver:
    return EngineDriver()


def row_id_of(version: int) -> bytes:
    return records.append_row_id(version)


def sync_all(store: EngineDriver, key: bytes, since: int = 0, limit: int | None = None):
    """Follow `more` to the end; returns (rows, final version, number of answers)."""
    rows, answers = [], 0
    while True:
        fields = {"key": key, "since": since}
        if limit is not None:
            fields["limit"] = limit
        result = store.do("sync", **fields)
        answers += 1
        rows += result["rows"]
        assert result["version"] >= since, "sync went backwards"
        since = result["version"]
        if not result["more"]:
            return rows, since, answers


def test_append_returns_the_new_version_which_is_the_row_id(store):
    """Each append makes one version; its row id is that version, 8 bytes big-endian."""
    assert [store.do("append", key=b"t", value=b"m%d" % n)["version"] for n in range(3)] == [1, 2, 3]
    assert store.do("table_get", key=b"t", row_id=row_id_of(2)) == {
        "value": b"m1", "version": 2, "table_version": 3,
    }


def test_sync_returns_rows_changed_after_since_in_version_order(store):
    """sync(since=v) returns exactly the rows changed at versions above v, each with the
    version that changed it, and the table's current version."""
    for n in range(5):
        store.do("append", key=b"t", value=b"m%d" % n)
    result = store.do("sync", key=b"t", since=2)
    assert result == {
        "version": 5,
        "rows": [[row_id_of(3), 3, b"m2"], [row_id_of(4), 4, b"m3"], [row_id_of(5), 5, b"m4"]],
        "more": False,
    }
    assert store.do("sync", key=b"t", since=5) == {"version": 5, "rows": [], "more": False}
    assert store.do("sync", key=b"t", since=99)["rows"] == []


def test_table_write_puts_and_deletes_rows_in_one_version(store):
    """One table_write is one version; every row it touches carries that version."""
    assert store.do("table_write", key=b"t", puts=[[b"a", b"1"], [b"b", b"2"]])["version"] == 1
    assert store.do("table_write", key=b"t", puts=[[b"c", b"3"]], deletes=[b"a"])["version"] == 2
    rows, version, _ = sync_all(store, b"t", since=1)
    assert version == 2
    assert sorted(rows) == [[b"a", 2, None], [b"c", 2, b"3"]]


def test_deleted_rows_appear_in_sync_as_deleted(store):
    """A row deleted after `since` comes back with value None (so a follower can drop it);
    it is not readable with table_get, whose not_found carries the deleting version."""
    store.do("table_write", key=b"t", puts=[[b"a", b"1"]])
    store.do("table_write", key=b"t", deletes=[b"a"])
    assert store.do("sync", key=b"t", since=1)["rows"] == [[b"a", 2, None]]
    with pytest.raises(NotFound) as missing:
        store.do("table_get", key=b"t", row_id=b"a")
    assert missing.value.version == 2


def test_a_row_changed_twice_is_synced_once_at_its_latest_version(store):
    """sync from 0 sends a row rewritten later only once, at the version of the rewrite."""
    store.do("table_write", key=b"t", puts=[[b"a", b"1"], [b"b", b"1"]])
    store.do("table_write", key=b"t", puts=[[b"a", b"2"]])
    rows, version, _ = sync_all(store, b"t")
    assert version == 2
    assert rows == [[b"b", 1, b"1"], [b"a", 2, b"2"]]


def test_table_write_expected_version_condition(store):
    """table_write with a stale expected_version fails with the current version; nothing
    changes. A value condition is bad_request (a table has no value)."""
    store.do("table_write", key=b"t", puts=[[b"a", b"1"]], expected_version=0)
    with pytest.raises(ConditionFailed) as failed:
        store.do("table_write", key=b"t", puts=[[b"a", b"2"]], expected_version=0)
    assert failed.value.version == 1
    assert store.do("table_get", key=b"t", row_id=b"a")["value"] == b"1"
    with pytest.raises(BadRequest):
        store.do("table_write", key=b"t", puts=[[b"a", b"2"]], expected_value=b"1")


def test_sync_with_a_limit_pages_by_whole_versions_and_misses_nothing():
    """With a small limit, sync stops at a version boundary with more=True; following
    `version` collects every row exactly once, in version order."""
    store = EngineDriver()
    expected = []
    for n in range(1, 12):
        if n % 3 == 0:
            version = store.do(
                "table_write", key=b"t", puts=[[b"x%d" % n, b"p"], [b"y%d" % n, b"q"]]
            )["version"]
            expected += [[b"x%d" % n, version, b"p"], [b"y%d" % n, version, b"q"]]
        else:
            version = store.do("append", key=b"t", value=b"v%d" % n)["version"]
            expected.append([row_id_of(version), version, b"v%d" % n])
    rows, version, answers = sync_all(store, b"t", limit=2)
    assert version == 11
    assert answers > 5
    assert sorted(rows, key=lambda row: (row[1], row[0])) == sorted(
        expected, key=lambda row: (row[1], row[0])
    )
    versions = [row[1] for row in rows]
    assert versions == sorted(versions)


def test_sync_returns_a_version_larger_than_the_limit_whole(store):
    """A single version with more rows than the limit is still returned whole (progress)."""
    store.do("table_write", key=b"t", puts=[[b"r%d" % n, b"v"] for n in range(5)])
    result = store.do("sync", key=b"t", limit=2)
    assert len(result["rows"]) == 5
    assert result["more"] is False


def test_sync_of_a_never_written_key_is_empty_at_version_zero(store):
    """A table nobody wrote syncs as version 0 with no rows."""
    assert store.do("sync", key=b"new") == {"version": 0, "rows": [], "more": False}


def test_table_rows_pages_live_rows_in_row_id_order():
    """table_rows lists live rows (deleted ones skipped) by row id; resume pages on."""
    store = EngineDriver(limits=Limits(scan_items_max=100))
    store.do("table_write", key=b"t", puts=[[b"r%02d" % n, b"v%d" % n] for n in range(10)])
    store.do("table_write", key=b"t", deletes=[b"r03", b"r04", b"r05"])
    store.do("append", key=b"other", value=b"not mine")
    seen, start_row = [], None
    while True:
        fields = {"key": b"t", "limit": 2}
        if start_row is not None:
            fields["start_row"] = start_row
        result = store.do("table_rows", **fields)
        assert result["table_version"] == 2
        assert len(result["rows"]) <= 2
        seen += result["rows"]
        start_row = result["resume"]
        if start_row is None:
            break
    assert seen == [[b"r%02d" % n, 1, b"v%d" % n] for n in (0, 1, 2, 6, 7, 8, 9)]


def test_table_batch_over_its_limit_is_too_large_and_changes_nothing():
    """A table_write with more rows than table_batch_rows_max is too_large."""
    store = EngineDriver(limits=Limits(table_batch_rows_max=3))
    with pytest.raises(TooLarge):
        store.do("table_write", key=b"t", puts=[[b"r%d" % n, b"v"] for n in range(4)])
    assert store.do("sync", key=b"t")["version"] == 0


def test_an_empty_table_write_is_bad_request(store):
    """A table_write with nothing in it would burn a version for nothing: refused."""
    with pytest.raises(BadRequest):
        store.do("table_write", key=b"t")
