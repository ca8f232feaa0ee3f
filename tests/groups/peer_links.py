"""Opening a peer link to a real node from a test, as a member would."""

from __future__ import annotations

import contextlib
import socket

from jepsen_tests.nodes import GroupProcesses
from kvsvr.wire import encode_frame

CONNECT_TIMEOUT_SECONDS = 5


@contextlib.contextmanager
def open_peer_link(group: GroupProcesses, target: int, claimed: int, channel: str = "consensus"):
    """A socket to node `target` that has said the peer hello as node `claimed`."""
    node = group.nodes[target]
    with socket.create_connection((node.host, node.port), timeout=CONNECT_TIMEOUT_SECONDS) as link:
        link.sendall(encode_frame({"id": 1, "op": "peer", "from": claimed, "channel": channel}))
        yield link
