"""A real node under random and mutated peer frames stays up and keeps serving.

A peer that gets past the hello (here: one that holds the group's secret,
or a member with a bug) can send any bytes on its link. The node must check
every message at the edge (kvsvr/replication/peer_input.py), drop the link
with a log line when one fails, and go on serving clients: before that
check, an Accept whose `instance` was null stopped the node with an
AttributeError from inside the acceptor.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jepsen_tests.nodes import GroupProcesses
from kvsvr.client import SyncClient
from kvsvr.protocol.wire import frame_from_body
from kvsvr.replication.codec import encode_message, envelope_body
from kvsvr.replication.messages import Accept

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "replication"))
from peer_message_strategies import message_bodies  # noqa: E402

from .peer_links import open_peer_link  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hostile_target(tmp_path_factory):
    group = GroupProcesses(tmp_path_factory.mktemp("hostile") / "group").start()
    yield group
    group.kill_all()


def send_as_peer(group: GroupProcesses, bodies: list[bytes]) -> None:
    """Open a link to n1 as n2, send each body as the one message of an
    envelope (codec.py), close the link."""
    with open_peer_link(group, target=1, claimed=2) as link:
        try:
            link.sendall(b"".join(frame_from_body(envelope_body([body])) for body in bodies))
        except OSError:
            pass  # the node dropped the link part way: what the test wants


def assert_still_serving(group: GroupProcesses, key: bytes) -> None:
    assert group.nodes[1].process.poll() is None, group.nodes[1].log_tail()
    with SyncClient(group.nodes[1].address) as client:
        version = client.put(key, b"still here")
        assert client.get(key).version == version


def test_a_null_field_in_an_accept_drops_the_link_not_the_node(hostile_target):
    """The reproduction from the issue: hello, then a well-framed Accept
    whose instance is null."""
    send_as_peer(hostile_target, [encode_message(Accept(b"k", (1, 1, 2), None, None))])
    assert_still_serving(hostile_target, b"after-null-accept")
    with SyncClient(hostile_target.nodes[1].address) as client:
        assert client.status()["peer_links_dropped"] >= 1
    assert "dropping the link from n2" in hostile_target.nodes[1].log_tail(200)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(message_bodies, min_size=1, max_size=6), example=st.integers(0, 10**9))
def test_random_and_mutated_peer_frames_never_stop_a_node(hostile_target, bodies, example):
    send_as_peer(hostile_target, bodies)
    assert_still_serving(hostile_target, b"after-%d" % example)
