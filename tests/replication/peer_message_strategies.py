"""Hypothesis strategies for peer messages: well-formed, ill-typed and mutated.

A hostile or broken peer can put anything msgpack can say into any field
of any message. The codec decodes only fields of their declared types, so
ill-typed ones are refused there; the messages drawn here are also
stepped into the core directly (as the simulator does), where
peer_input.py must refuse them. These strategies draw messages whose fields are
mostly plausible (members' ids, small versions, refs of real payloads) so
that they reach deep into the handlers, with a share of wrong types, out of
range numbers and inconsistent combinations; and frames that are random
bytes or the bytes of a valid message with a few bytes changed.
"""

from __future__ import annotations

import cbor2
import crc32c
from hypothesis import strategies as st

from kvsvr.replication import messages as m
from kvsvr.replication.codec import encode_message

MEMBERS = (1, 2, 3)
KEYS = (b"k1", b"k2", b"t1")
PAYLOADS = (
    cbor2.dumps([["put", b"x"]]),
    cbor2.dumps([["put", b"y"], ["delete"]]),
    cbor2.dumps([["append", b"row"]]),
    cbor2.dumps([["table_write", [[b"r", b"v"]], [b"gone"]]]),
)

garbage = st.one_of(
    st.none(),
    st.booleans(),
    # Every integer msgpack can carry (the wire holds no larger ones).
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=16),
    st.lists(st.integers(-3, 3), max_size=4),
    st.tuples(st.integers(-3, 3)),
    st.dictionaries(st.text(max_size=3), st.integers(-(2**63), 2**63), max_size=2),
)


def sometimes_wrong(strategy):
    """Mostly `strategy`, now and then anything at all (one field in about
    twenty: a message has several, and most should get past the checks)."""
    return mostly(strategy, garbage, 20)


def mostly(strategy, edge, one_in: int = 10):
    """`strategy`, but `edge` one time in `one_in` (shrinking toward `strategy`)."""
    return st.integers(0, one_in - 1).flatmap(lambda roll: edge if roll == one_in - 1 else strategy)


small = st.integers(min_value=0, max_value=6)
node = mostly(st.sampled_from(MEMBERS), st.sampled_from((0, 4, 99)))
ballots = st.tuples(mostly(st.integers(1, 5), st.just(0)), mostly(st.integers(1, 3), st.just(0)),
                    node)
keys = mostly(st.sampled_from(KEYS),
              st.one_of(st.binary(max_size=4), st.binary(min_size=1100, max_size=1100)))
payloads = mostly(st.sampled_from(PAYLOADS), st.binary(max_size=24))


@st.composite
def refs(draw):
    payload = draw(st.sampled_from(PAYLOADS))
    crc = draw(mostly(st.just(crc32c.crc32c(payload)), st.integers(0, 2**32 + 1)))
    return (draw(node), draw(mostly(st.integers(1, 2), st.just(0))),
            draw(mostly(st.integers(1, 9), st.just(0))), crc)


instances = st.builds(
    m.Instance,
    sometimes_wrong(mostly(st.integers(1, 4), st.just(0))),
    sometimes_wrong(mostly(st.integers(1, 2), st.just(0))),
    sometimes_wrong(refs()),
)
maybe_instances = st.one_of(st.none(), instances)
votes = st.one_of(st.none(), st.builds(m.Vote, sometimes_wrong(ballots), sometimes_wrong(instances)))
positions = st.tuples(st.integers(0, 3), st.integers(0, 9))
read_ids = st.tuples(mostly(st.integers(1, 3), st.just(0)), mostly(st.integers(1, 5), st.just(0)))
records = st.one_of(
    st.builds(m.PayloadRecord, sometimes_wrong(refs()), sometimes_wrong(keys),
              sometimes_wrong(payloads)),
    st.builds(m.DecisionRecord, sometimes_wrong(keys), sometimes_wrong(instances)),
)
W = sometimes_wrong

messages = st.one_of(
    st.builds(m.Prepare, W(keys), W(ballots)),
    st.builds(m.Promise, W(keys), W(ballots), W(st.booleans()), W(ballots), W(maybe_instances),
              W(votes), W(st.one_of(st.none(), payloads))),
    st.builds(m.Accept, W(keys), W(ballots), W(instances), W(maybe_instances)),
    st.builds(m.Accepted, W(keys), W(ballots), W(instances),
              W(st.sampled_from(("accepted", "rejected", "already_chosen", "maybe"))),
              W(ballots), W(maybe_instances), W(maybe_instances)),
    st.builds(m.Commit, W(keys), W(instances)),
    st.builds(m.Read, W(keys), W(read_ids)),
    st.builds(m.ReadReply, W(keys), W(read_ids), W(maybe_instances), W(votes), W(small)),
    st.builds(m.FetchPayload, W(refs())),
    st.builds(m.PayloadReply, W(refs()), W(keys), W(st.one_of(st.none(), payloads))),
    st.builds(m.FetchState, W(keys), W(small)),
    st.builds(
        m.StateReply, W(keys), W(small),
        W(st.one_of(st.none(), st.tuples(small, st.sampled_from(("kv", "table", "x")),
                                         st.one_of(st.none(), st.binary(max_size=4))))),
        W(st.one_of(st.none(), st.lists(st.tuples(st.binary(max_size=3), small,
                                                  st.one_of(st.none(), st.binary(max_size=3))),
                                        max_size=3))),
        W(maybe_instances), W(st.integers(-1, 3)), W(st.integers(-1, 3)),
    ),
    st.builds(m.FetchDecisions, W(keys), W(positions)),
    st.builds(m.DecisionsReply, W(keys),
              W(st.lists(st.tuples(W(keys), W(instances)), max_size=3).map(tuple)),
              W(st.one_of(st.none(), keys)), W(positions)),
    st.builds(m.StreamRecords, W(positions),
              W(st.lists(st.tuples(W(positions), W(records)), max_size=3).map(tuple))),
    st.builds(m.StreamAck, W(positions)),
    st.builds(m.StreamTrimmed, W(positions)),
)


@st.composite
def mutated_frames(draw) -> bytes:
    """The encoding of a drawn message with a few bytes changed, cut or added."""
    body = bytearray(encode_message(draw(messages)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(("flip", "cut", "insert")))
        at = draw(st.integers(0, max(0, len(body) - 1)))
        if action == "flip" and body:
            body[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del body[at:at + draw(st.integers(1, 4))]
        else:
            body[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(body)


message_bodies = st.one_of(
    messages.map(encode_message),
    mutated_frames(),
    st.binary(max_size=64),
)
