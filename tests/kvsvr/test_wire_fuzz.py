"""The frame decoder and request parser fuzzed with hypothesis.

Unit level: whatever bytes arrive, FrameDecoder, decode_body,
parse_request and the engine behind them raise nothing but KvError
subclasses (a typed answer), never another exception that would take a
connection or the node down.

Live: one node process for the module. Each garbage input goes on its own
connection; afterwards the node is still up, answers a good request on a
fresh connection, and the data stored before the run is unchanged.
"""

from __future__ import annotations

import struct

import cbor2
import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvsvr_test_support import EngineDriver, blocking_exchange, request_frame

from jepsen_tests.nodes import NodeProcess
from kvsvr.client import SyncClient
from kvsvr.core.requests import OPERATIONS, parse_request
from kvsvr.protocol.errors import KvError
from kvsvr.protocol.limits import Limits
from kvsvr.protocol.wire import (
    BODY_NESTING_MAX,
    FrameDecoder,
    FrameError,
    decode_body,
    encode_frame,
)

FRAME_SIZE_MAX_BYTES = 64 * 1024
SMALL_LIMITS = Limits(
    key_size_max_bytes=16,
    value_size_max_bytes=1024,
    frame_size_max_bytes=FRAME_SIZE_MAX_BYTES,
    table_batch_rows_max=4,
    scan_items_max=4,
    commit_queue_ops_max=64,
)
SENTINEL_PREFIX = b"sentinel/"
FIELD_NAMES = [
    "key", "value", "expected_version", "expected_value", "prefix", "start", "end", "resume",
    "limit", "since", "row_id", "start_row", "puts", "deletes",
]

# -- strategies ------------------------------------------------------------------

cbor_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=24),
)
cbor_values = st.recursive(
    cbor_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-5, 5)), children, max_size=4),
    ),
    max_leaves=24,
)
small_bytes = st.binary(max_size=20)
field_values = st.one_of(
    small_bytes,
    st.integers(min_value=-3, max_value=2**64),
    st.lists(st.one_of(st.lists(small_bytes, min_size=1, max_size=3), small_bytes), max_size=6),
    cbor_values,
)
request_ids = st.one_of(st.integers(min_value=1, max_value=10**6), cbor_leaves)
request_maps = st.builds(
    lambda request_id, op, fields: {"id": request_id, "op": op, **fields},
    request_ids,
    st.one_of(st.sampled_from(OPERATIONS), st.text(max_size=10), cbor_leaves),
    st.dictionaries(st.sampled_from(FIELD_NAMES), field_values, max_size=6),
)


def nested(depth: int, container: str) -> bytes:
    """A CBOR body `depth` containers deep: lists, or maps keyed 'a'."""
    opener = b"\x81" if container == "list" else b"\xa1\x61a"
    return opener * depth + b"\x00"


deep_bodies = st.builds(nested, st.integers(min_value=1, max_value=5000), st.sampled_from(["list", "map"]))
huge_length_bodies = st.sampled_from([
    b"\x5b\x7f\xff\xff\xff\xff\xff\xff\xff",  # a byte string of 2**63-1 bytes
    b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00",  # an array of 2**32 items
    b"\xbb\xff\xff\xff\xff\xff\xff\xff\xff",  # a map of 2**64-1 pairs
    b"\x7a\xff\xff\xff\xff",  # a text string of 2**32-1 bytes
    b"\xa1\x62id\x1b\xff\xff\xff\xff\xff\xff\xff\xff",  # id 2**64-1
])


def frame_of(body: bytes) -> bytes:
    return struct.pack(">II", len(body), crc32c.crc32c(body)) + body


def encoded(message: object) -> bytes:
    return cbor2.dumps(message)


bodies = st.one_of(
    st.binary(max_size=200),
    deep_bodies,
    huge_length_bodies,
    cbor_values.map(encoded),
    request_maps.map(encoded),
)
garbage = st.one_of(
    st.binary(max_size=300),  # noise, almost never a well-formed frame
    bodies.map(frame_of),  # well-framed, bad inside
    st.tuples(bodies, st.integers(min_value=0, max_value=2**32 - 1)).map(  # a lying length
        lambda pair: struct.pack(">II", pair[1], crc32c.crc32c(pair[0])) + pair[0]
    ),
    st.tuples(request_maps, st.integers(min_value=0, max_value=200)).map(  # a truncated frame
        lambda pair: frame_of(encoded(pair[0]))[: pair[1]]
    ),
    st.tuples(bodies, st.integers(0, 2**32 - 1)).map(  # a wrong checksum
        lambda pair: struct.pack(">II", len(pair[0]), pair[1]) + pair[0]
    ),
    st.lists(bodies.map(frame_of), min_size=2, max_size=5).map(b"".join),  # several in a row
)


# -- unit level --------------------------------------------------------------------


def decode_everything(data: bytes, chunk_sizes: list[int]) -> list[dict]:
    """Feed `data` in chunks and decode every frame, as a server would; returns the
    request maps that made it through. Only KvError may escape."""
    decoder = FrameDecoder(FRAME_SIZE_MAX_BYTES)
    messages = []
    position = 0
    for size in chunk_sizes + [len(data)]:
        decoder.feed(data[position : position + size])
        position += size
        while (body := decoder.next_body()) is not None:
            try:
                messages.append(decode_body(body))
            except KvError:
                continue
    return messages


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=garbage, chunk_sizes=st.lists(st.integers(min_value=0, max_value=64), max_size=8))
def test_frame_decoding_raises_only_kv_errors(data, chunk_sizes):
    """FrameDecoder + decode_body on any bytes, fed in any chunks: frames decode to maps
    with a valid integer id, or a KvError is raised (FrameError for broken framing)."""
    try:
        messages = decode_everything(data, chunk_sizes)
    except FrameError as error:
        assert error.code in {"too_large", "bad_request"}
        return
    for message in messages:
        assert isinstance(message, dict)
        assert isinstance(message["id"], int) and message["id"] >= 1


@settings(max_examples=200)
@given(messages=st.lists(request_maps, max_size=6),
       chunk_sizes=st.lists(st.integers(min_value=1, max_value=40), max_size=20))
def test_well_framed_messages_survive_any_split(messages, chunk_sizes):
    """Frames cut at arbitrary points decode to exactly the bodies sent, in order."""
    frames = [frame_of(encoded(message)) for message in messages]
    decoder = FrameDecoder(FRAME_SIZE_MAX_BYTES)
    data, position, bodies_seen = b"".join(frames), 0, []
    for size in chunk_sizes + [len(data)]:
        decoder.feed(data[position : position + size])
        position += size
        while (body := decoder.next_body()) is not None:
            bodies_seen.append(body)
    assert bodies_seen == [frame[8:] for frame in frames]
    assert decoder.buffered_bytes == 0


@pytest.mark.parametrize("container", ["list", "map"])
def test_deep_nesting_is_refused_without_recursion(container):
    """A body nested past BODY_NESTING_MAX, even 100,000 deep, is a BadRequest, not a
    RecursionError; a body within the limit decodes."""
    for depth in (BODY_NESTING_MAX + 1, 1000, 100_000):
        with pytest.raises(KvError) as refused:
            decode_body(nested(depth, container))
        assert refused.value.code == "bad_request"
    shallow = {"id": 1, "op": "table_write", "puts": [[b"r", b"v"]]}
    assert decode_body(encoded(shallow)) == shallow


def test_a_frame_length_over_the_limit_is_refused_before_buffering_it():
    """The length prefix alone decides: a frame claiming 4 GiB is too_large at once."""
    decoder = FrameDecoder(FRAME_SIZE_MAX_BYTES)
    decoder.feed(struct.pack(">II", 2**32 - 1, 0))
    with pytest.raises(FrameError) as refused:
        decoder.next_body()
    assert refused.value.code == "too_large"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(message=request_maps)
def test_request_parsing_raises_only_kv_errors(message):
    """parse_request on any map: a typed request, or BadRequest/TooLarge naming the problem."""
    try:
        parse_request(message, SMALL_LIMITS)
    except KvError as error:
        assert error.code in {"bad_request", "too_large"}
        assert error.message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(request_maps, max_size=25), commits=st.lists(st.booleans(), max_size=25))
def test_the_engine_answers_any_request_sequence_with_results_or_kv_errors(messages, commits):
    """Random requests parsed and executed on an engine with tiny limits, committed at
    random points: every answer is a result map or a KvError, never an assertion or any
    other exception (bad input never looks like a broken invariant)."""
    store = EngineDriver(limits=SMALL_LIMITS)
    waiting = []
    for message, commit in zip(messages, commits + [False] * len(messages), strict=False):
        try:
            request = parse_request(message, SMALL_LIMITS)
            waiting.append(store.engine.execute(request))
        except KvError:
            pass
        if commit:
            store.commit()
    store.commit()
    for outcome in waiting:
        try:
            assert isinstance(store.answer(outcome), dict)
        except KvError:
            pass


# -- live ---------------------------------------------------------------------------

SENTINELS = {SENTINEL_PREFIX + b"kv": b"keep me", SENTINEL_PREFIX + b"other": b"\x00" * 100}


@pytest.fixture(scope="module")
def fuzzed_node(tmp_path_factory):
    """One node process for the whole fuzz run, with sentinel data stored before it."""
    node = NodeProcess(tmp_path_factory.mktemp("fuzz") / "node",
                       extra_args=("--frame-size-max-bytes", str(FRAME_SIZE_MAX_BYTES),
                                   "--value-size-max-bytes", "4096")).start()
    with SyncClient(node.address) as client:
        for key, value in SENTINELS.items():
            client.put(key, value)
        client.append(SENTINEL_PREFIX + b"table", b"row")
    yield node
    node.kill()


def assert_sentinels_unchanged(address: str) -> None:
    with SyncClient(address) as client:
        for key, value in SENTINELS.items():
            item = client.get(key)
            assert (item.value, item.version) == (value, 1)
        table = client.sync(SENTINEL_PREFIX + b"table")
        assert (table.version, [row.value for row in table.rows]) == (1, [b"row"])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=garbage)
def test_the_live_node_survives_garbage_and_answers_the_next_good_request(fuzzed_node, data):
    """After any garbage on its own connection, the node process is alive, every frame it
    answered with decodes, and a fresh connection gets a correct answer."""
    if SENTINEL_PREFIX in data:
        return  # a well-formed write to a sentinel would be a legitimate change
    for answer in blocking_exchange(fuzzed_node.address, data):
        assert set(answer) == {"id", "ok"} or set(answer) == {"id", "error"}
    assert fuzzed_node.process.poll() is None, fuzzed_node.log_tail()
    good = blocking_exchange(fuzzed_node.address,
                             request_frame(7, "get", key=SENTINEL_PREFIX + b"kv"))
    assert good == [{"id": 7, "ok": {"value": b"keep me", "version": 1}}]


def test_the_live_node_kept_its_data_through_the_fuzz_run(fuzzed_node):
    """Runs after the fuzz test in this module: stored data is what it was before."""
    assert fuzzed_node.process.poll() is None
    assert_sentinels_unchanged(fuzzed_node.address)
    frame = encode_frame({"id": 1, "op": "ping"})
    assert blocking_exchange(fuzzed_node.address, frame) == [{"id": 1, "ok": {}}]
