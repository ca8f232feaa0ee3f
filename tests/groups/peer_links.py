"""Opening a peer link to a real node from a test, as a member would: the
authenticated hello (kvsvr/protocol/peer_auth.py) said with the group's secret, on a
blocking socket, so a test can then write any frames a member could."""

from __future__ import annotations

import contextlib
import secrets
import socket

from jepsen_tests.nodes import GroupProcesses
from kvsvr.protocol.peer_auth import NONCE_SIZE_BYTES, ConnectingHandshake, PeerSecrets, cluster_id
from kvsvr.protocol.wire import FrameDecoder, decode_answer, encode_frame
from kvsvr.replication.codec import WIRE_VERSION
from kvsvr.shell.secret_file import read_secret_file

CONNECT_TIMEOUT_SECONDS = 5
_HELLO_ANSWER_SIZE_MAX_BYTES = 4096


def say_hello(link: socket.socket, group: GroupProcesses, target: int, claimed: int,
              channel: str) -> bytes:
    """Authenticate `link` to node `target` as node `claimed`; returns the proof frame
    sent last, so a caller may send more in the same write."""
    members = {node_id: (node.host, node.port) for node_id, node in group.nodes.items()}
    handshake = ConnectingHandshake(
        PeerSecrets(read_secret_file(str(group.peer_secret_file))), cluster_id(members), claimed,
        target, channel, secrets.token_bytes(NONCE_SIZE_BYTES), WIRE_VERSION)
    link.sendall(encode_frame({"id": 1, **handshake.hello()}))
    decoder = FrameDecoder(_HELLO_ANSWER_SIZE_MAX_BYTES)
    while (body := decoder.next_body()) is None:
        data = link.recv(_HELLO_ANSWER_SIZE_MAX_BYTES)
        assert data, f"n{target} closed the link during the hello"
        decoder.feed(data)
    answer = decode_answer(body)
    assert "ok" in answer, f"n{target} refused the hello: {answer}"
    return encode_frame({"id": 2, **handshake.on_challenge(answer["ok"])})


@contextlib.contextmanager
def open_peer_link(group: GroupProcesses, target: int, claimed: int, channel: str = "consensus"):
    """A socket to node `target` on which the hello was said, as node `claimed`."""
    node = group.nodes[target]
    with socket.create_connection((node.host, node.port), timeout=CONNECT_TIMEOUT_SECONDS) as link:
        link.sendall(say_hello(link, group, target, claimed, channel))
        yield link
