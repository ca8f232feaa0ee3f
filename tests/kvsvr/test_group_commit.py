"""Group-commit bookkeeping in the engine: nothing is answered, read or
reported before the batch behind it is synced."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvsvr_test_support import AcknowledgedWrites, EngineDriver, acknowledged_write_problems

from kvsvr.protocol.errors import ConditionFailed, NotFound, Overloaded
from kvsvr.protocol.limits import Limits
from kvsvr.storage import MemoryStorage


@pytest.fixture
def store() -> EngineDriver:
    return EngineDriver()


def test_a_write_waits_for_its_generation_and_is_stored_only_when_committed(store):
    """A write's outcome names the open generation; storage holds nothing until that
    batch is cut and synced."""
    outcome = store.submit("put", key=b"k", value=b"v")
    assert outcome.generation == store.engine.open_generation == 1
    assert store.storage.get("keys", b"k") is None
    assert store.engine.synced_generation == 0
    assert store.commit() == 1
    assert store.engine.synced_generation == 1
    assert store.storage.get("keys", b"k") is not None
    assert store.answer(outcome) == {"version": 1}


def test_writes_of_one_tick_share_one_batch_and_one_sync(store):
    """Many writes before a commit are one generation, written with one sync."""
    outcomes = [store.submit("put", key=b"k%d" % n, value=b"v") for n in range(10)]
    assert {outcome.generation for outcome in outcomes} == {1}
    store.commit()
    assert store.engine.batches_synced == 1
    assert store.engine.commit_queue_ops == 0


def test_a_read_of_an_unsynced_key_waits_for_its_generation(store):
    """get of a key whose newest write is not synced answers only after that generation,
    and then with the written value (linearizable and durable)."""
    store.do("put", key=b"k", value=b"old")
    write = store.submit("put", key=b"k", value=b"new")
    read = store.submit("get", key=b"k")
    assert read.generation == write.generation == store.engine.open_generation
    store.commit()
    assert store.answer(read) == {"value": b"new", "version": 2}


def test_a_read_of_a_key_in_a_batch_being_synced_still_waits(store):
    """A batch that is cut but not yet synced is not durable: a read of its key waits,
    while a write meanwhile goes to the next generation."""
    store.submit("put", key=b"k", value=b"v")
    generation, writes = store.engine.take_batch()
    read = store.submit("get", key=b"k")
    assert read.generation == generation
    later = store.submit("put", key=b"j", value=b"w")
    assert later.generation == generation + 1
    store.storage.write(writes, True)
    store.engine.batch_synced(generation, len(writes))
    assert store.answer(read)["value"] == b"v"
    assert store.engine.key_state(b"j").version == 1  # still in the overlay


def test_a_key_written_again_in_the_next_generation_stays_unsynced(store):
    """Syncing generation g must not drop the overlay of a key rewritten in g+1."""
    store.submit("put", key=b"k", value=b"first")
    generation, writes = store.engine.take_batch()
    second = store.submit("put", key=b"k", value=b"second")
    store.storage.write(writes, True)
    store.engine.batch_synced(generation, len(writes))
    read = store.submit("get", key=b"k")
    assert read.generation == second.generation
    store.commit()
    assert store.answer(read) == {"value": b"second", "version": 2}


def test_not_found_of_an_unsynced_delete_waits(store):
    """A get that would answer not_found from an unsynced tombstone waits too."""
    store.do("put", key=b"k", value=b"v")
    store.submit("delete", key=b"k")
    read = store.submit("get", key=b"k")
    assert read.generation > store.engine.synced_generation
    store.commit()
    with pytest.raises(NotFound):
        store.answer(read)


def test_a_failed_condition_on_unsynced_state_waits_for_that_state(store):
    """A compare-and-set that fails against a write not yet synced reveals that write's
    version, so its answer waits for the write's generation (docs/protocol-rules.md R7: a failed
    condition depending on a batch not yet chosen is answered only once it is)."""
    write = store.submit("put", key=b"k", value=b"v")
    failed = store.submit("put", key=b"k", value=b"x", expected_version=0)
    assert failed.generation == write.generation
    store.commit()
    with pytest.raises(ConditionFailed) as error:
        store.answer(failed)
    assert error.value.version == 1
    assert store.engine.writes_applied == 1


def test_table_reads_and_scans_wait_for_unsynced_writes(store):
    """sync, table_get, table_rows of an unsynced table and a scan while any write is
    unsynced wait, then see the write."""
    store.submit("append", key=b"t", value=b"row")
    store.submit("put", key=b"k", value=b"v")
    reads = {
        "sync": store.submit("sync", key=b"t"),
        "table_get": store.submit("table_get", key=b"t", row_id=b"\0" * 7 + b"\1"),
        "table_rows": store.submit("table_rows", key=b"t"),
        "scan": store.submit("scan", prefix=b""),
    }
    assert all(outcome.generation == 1 for outcome in reads.values())
    store.commit()
    assert store.answer(reads["sync"])["version"] == 1
    assert store.answer(reads["table_get"])["value"] == b"row"
    assert len(store.answer(reads["table_rows"])["rows"]) == 1
    assert [item[0] for item in store.answer(reads["scan"])["items"]] == [b"k", b"t"]


def test_reads_of_synced_keys_answer_at_once(store):
    """With nothing unsynced, reads do not wait (generation 0)."""
    store.do("put", key=b"k", value=b"v")
    assert store.submit("get", key=b"k").generation == 0
    assert store.submit("scan", prefix=b"").generation == 0
    store.submit("put", key=b"other", value=b"v")
    assert store.submit("get", key=b"k").generation == 0


def test_batches_must_sync_in_order(store):
    """Syncing generation 2 before 1 is a broken invariant: an AssertionError."""
    store.submit("put", key=b"a", value=b"v")
    store.engine.take_batch()
    store.submit("put", key=b"b", value=b"v")
    generation, writes = store.engine.take_batch()
    with pytest.raises(AssertionError):
        store.engine.batch_synced(generation, len(writes))


def test_commit_queue_over_its_limit_answers_overloaded_and_changes_nothing():
    """Past commit_queue_ops_max records waiting, a write is refused with overloaded (a
    definite failure) and leaves no trace; once the batch syncs, writes go through."""
    store = EngineDriver(limits=Limits(commit_queue_ops_max=3))
    for n in range(3):
        store.submit("put", key=b"k%d" % n, value=b"v")
    with pytest.raises(Overloaded) as refused:
        store.submit("put", key=b"extra", value=b"v")
    assert not refused.value.indeterminate
    assert store.engine.key_state(b"extra").version == 0
    store.commit()
    assert store.do("put", key=b"extra", value=b"v") == {"version": 1}


def test_a_crash_loses_only_unanswered_writes(store):
    """Writes in a batch that never synced vanish with a crash; their answers were never
    released. Everything answered before is still there for a restarted engine."""
    store.do("put", key=b"kept", value=b"v")
    lost = store.submit("put", key=b"lost", value=b"v")
    assert lost.generation > store.engine.synced_generation
    store.storage.crash()
    restarted = EngineDriver(store.storage)
    assert restarted.do("get", key=b"kept") == {"value": b"v", "version": 1}
    with pytest.raises(NotFound):
        restarted.do("get", key=b"lost")


class ForgetfulStorage(MemoryStorage):
    """A broken disk: it reports one sync as done but keeps the batch unsynced."""

    forget_next_sync = False

    def write(self, writes, sync):
        if sync and self.forget_next_sync:
            self.forget_next_sync = False
            sync = False
        super().write(writes, sync)


def _read_back(engine_storage, keys, tables):
    restarted = EngineDriver(engine_storage)
    stored = {}
    for key in keys:
        try:
            answer = restarted.do("get", key=key)
            stored[key] = (answer["version"], answer["value"])
        except NotFound as missing:
            stored[key] = (missing.version, None)
    rows = {table: restarted.do("sync", key=table, since=0)["rows"] for table in tables}
    return stored, rows


def test_the_acknowledged_write_check_catches_a_lost_synced_batch():
    """The check the crash tests rely on does fail: a disk that lies about one sync loses an
    acknowledged put and append across a crash, and the check names both."""
    storage = ForgetfulStorage()
    store = EngineDriver(storage)
    acknowledged = AcknowledgedWrites()
    for value in (b"a", b"b"):
        acknowledged.attempt(b"k", value)
        acknowledged.acknowledge(b"k", store.do("put", key=b"k", value=value)["version"], value)
    acknowledged.attempt(b"t", b"row")
    acknowledged.acknowledge_append(b"t", store.do("append", key=b"t", value=b"row")["version"],
                                    b"row")
    assert acknowledged_write_problems(acknowledged, *_read_back(storage, [b"k"], [b"t"])) == []

    storage.forget_next_sync = True
    acknowledged.attempt(b"k", b"c")
    acknowledged.attempt(b"t", b"row2")
    version = store.do("put", key=b"k", value=b"c")["version"]  # answered: "durable"
    acknowledged.acknowledge(b"k", version, b"c")
    storage.forget_next_sync = True
    version = store.do("append", key=b"t", value=b"row2")["version"]
    acknowledged.acknowledge_append(b"t", version, b"row2")
    storage.crash()
    problems = acknowledged_write_problems(acknowledged, *_read_back(storage, [b"k"], [b"t"]))
    assert len(problems) == 2
    assert "b'k': acknowledged version 3, stored 2 (lost)" in problems
    assert any("append at version 2 is missing" in problem for problem in problems)


def test_the_acknowledged_write_check_flags_wrong_values_and_disorder():
    """The check also fails on a stored value nobody sent and on rows out of order."""
    acknowledged = AcknowledgedWrites()
    acknowledged.attempt(b"k", b"a")
    acknowledged.acknowledge(b"k", 1, b"a")
    acknowledged.attempt(b"t", b"x")
    acknowledged.attempt(b"t", b"y")
    acknowledged.acknowledge_append(b"t", 1, b"x")
    acknowledged.acknowledge_append(b"t", 2, b"y")
    row = lambda version, value: [version.to_bytes(8, "big"), version, value]  # noqa: E731
    assert acknowledged_write_problems(
        acknowledged, {b"k": (1, b"a")}, {b"t": [row(1, b"x"), row(2, b"y")]}) == []
    assert acknowledged_write_problems(
        acknowledged, {b"k": (1, b"zzz")}, {b"t": [row(1, b"x"), row(2, b"y")]})
    assert acknowledged_write_problems(
        acknowledged, {b"k": (2, b"zzz")}, {b"t": [row(1, b"x"), row(2, b"y")]})
    assert acknowledged_write_problems(
        acknowledged, {b"k": (1, b"a")}, {b"t": [row(2, b"y"), row(1, b"x")]})
    assert acknowledged_write_problems(
        acknowledged, {b"k": (1, b"a")}, {b"t": [row(1, b"x"), row(1, b"x"), row(2, b"y")]})


_KEYS = [b"a", b"b", b"c"]
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(_KEYS)),
        st.tuples(st.just("get"), st.sampled_from(_KEYS)),
        st.tuples(st.just("append"), st.just(b"t")),
        st.tuples(st.just("commit"), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(steps=_steps)
def test_every_released_answer_survives_a_crash_at_any_point(steps):
    """Random puts, gets, appends and commits, then a crash: every answer the engine
    released (writes acknowledged, values read) is in the storage a restarted engine
    reads, and nothing unsent appears."""
    storage = MemoryStorage()
    store = EngineDriver(storage)
    acknowledged = AcknowledgedWrites()
    waiting = []
    for number, (op, key) in enumerate(steps):
        if op == "commit":
            store.commit()
        else:
            value = b"%s-%d" % (key, number)
            if op == "get":
                try:
                    waiting.append((op, key, None, store.submit("get", key=key)))
                except NotFound:
                    pass  # answered at once from synced storage: nothing to remember
            else:
                acknowledged.attempt(key, value)
                waiting.append((op, key, value, store.submit(op, key=key, value=value)))
        still_waiting = []
        for op_waiting, key_waiting, value, outcome in waiting:
            if outcome.generation > store.engine.synced_generation:
                still_waiting.append((op_waiting, key_waiting, value, outcome))
                continue
            try:
                answer = store.answer(outcome)
            except NotFound:
                continue
            if op_waiting == "append":
                acknowledged.acknowledge_append(key_waiting, answer["version"], value)
            else:
                acknowledged.acknowledge(key_waiting, answer["version"], value or answer["value"])
        waiting = still_waiting
    storage.crash()
    assert acknowledged_write_problems(acknowledged, *_read_back(storage, _KEYS, [b"t"])) == []


def test_engine_statistics_count_what_is_waiting():
    """statistics() reports writes, batches, queued records and unsynced keys."""
    store = EngineDriver()
    engine = store.engine
    store.submit("put", key=b"k", value=b"v")
    assert engine.statistics() == {
        "writes_applied": 1, "batches_synced": 0, "commit_queue_ops": 1, "unsynced_keys": 1,
    }
    store.commit()
    assert engine.statistics() == {
        "writes_applied": 1, "batches_synced": 1, "commit_queue_ops": 0, "unsynced_keys": 0,
    }
