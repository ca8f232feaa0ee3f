"""The peer hello on real node processes: strangers are refused, members get in.

A connection on a node's port becomes a peer link only through the
challenge-response of kvsvr/protocol/peer_auth.py. These tests play the stranger
with raw frames against a running group of three (sharing one group, so
every check reads counters as differences): each attack is answered with
one `unavailable` frame, the connection is closed, the node logs it and
counts it in `peer_hellos_refused`, and the group goes on serving clients.
The last test turns it round: an impostor on a member's address gets no
proof and no peer message from the real members.
"""

from __future__ import annotations

import functools
import secrets
import socket
import time

import pytest
import trio

from jepsen_tests.nodes import GroupProcesses
from kvsvr.client import Client, SyncClient
from kvsvr.protocol.limits import DEFAULT_LIMITS
from kvsvr.protocol.peer_auth import (
    CONNECTING_LABEL,
    NONCE_SIZE_BYTES,
    ConnectingHandshake,
    PeerSecrets,
    cluster_id,
    key_id,
    proof,
    transcript,
)
from kvsvr.protocol.wire import (
    FrameDecoder,
    decode_answer,
    decode_body,
    encode_frame,
    frame_from_body,
)
from kvsvr.replication.codec import WIRE_VERSION, encode_message, envelope_body
from kvsvr.replication.messages import FetchPayload
from kvsvr.shell.replica_node import PEER_HELLO_FRAME_SIZE_MAX_BYTES, PEER_HELLO_TIMEOUT_SECONDS
from kvsvr.shell.secret_file import read_secret_file

from .peer_links import open_peer_link, say_hello
from .test_group_processes import wait_until

READ_SECONDS = 10.0
STRANGER_SECRET = PeerSecrets(bytes(range(32)))


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    processes = GroupProcesses(tmp_path_factory.mktemp("auth") / "group").start()
    yield processes
    processes.kill_all()


def members(group: GroupProcesses) -> dict[int, tuple[str, int]]:
    return {node_id: (node.host, node.port) for node_id, node in group.nodes.items()}


def handshake_as(group: GroupProcesses, peer_secrets: PeerSecrets, own_id: int = 2,
                 channel: str = "consensus") -> ConnectingHandshake:
    """A connecting end claiming to be node `own_id`, dialling node 1."""
    return ConnectingHandshake(peer_secrets, cluster_id(members(group)), own_id, 1, channel,
                               secrets.token_bytes(NONCE_SIZE_BYTES), WIRE_VERSION)


def group_secrets(group: GroupProcesses) -> PeerSecrets:
    return PeerSecrets(read_secret_file(str(group.peer_secret_file)))


class Raw:
    """A raw connection to node 1, speaking frames."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.decoder = FrameDecoder(DEFAULT_LIMITS.frame_size_max_bytes)

    async def send(self, request_id: int, body: dict) -> None:
        await self.stream.send_all(encode_frame({"id": request_id, **body}))

    async def next_answer(self) -> dict | None:
        """The next answer frame, None once the node closed the connection."""
        with trio.fail_after(READ_SECONDS):
            while (body := self.decoder.next_body()) is None:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return None
                if not data:
                    return None
                self.decoder.feed(data)
        return decode_answer(body)

    async def refusal(self) -> str:
        """The node's refusal: one `unavailable` answer, then the connection closes."""
        answer = await self.next_answer()
        assert answer is not None and answer["error"]["code"] == "unavailable", answer
        assert await self.next_answer() is None, "the node kept the connection open"
        return answer["error"]["message"]


async def open_raw(group: GroupProcesses) -> Raw:
    node = group.nodes[1]
    return Raw(await trio.open_tcp_stream(node.host, node.port))


async def challenged_stranger(group: GroupProcesses) -> tuple[Raw, dict, dict]:
    """A stranger past the first step: it offered the group's key ids (seen on the
    wire) and got node 1's challenge. Returns the connection, its hello, the challenge."""
    hello = {**handshake_as(group, STRANGER_SECRET).hello(), "keys": group_secrets(group).key_ids()}
    raw = await open_raw(group)
    await raw.send(1, hello)
    answer = await raw.next_answer()
    assert answer is not None and "ok" in answer, answer
    return raw, hello, answer["ok"]


async def node_status(group: GroupProcesses, node_id: int = 1) -> dict:
    async with Client(group.nodes[node_id].address) as client:
        return await client.status()


async def refused_count(group: GroupProcesses) -> int:
    return (await node_status(group))["peer_hellos_refused"]


async def assert_group_serves(group: GroupProcesses, key: bytes) -> None:
    """Writes through node 1 are chosen by a majority and read back through node 2."""
    async with Client(group.nodes[1].address) as client:
        version = await client.put(key, b"still serving")
    async with Client(group.nodes[2].address) as client:
        item = await client.get(key)
    assert (item.value, item.version) == (b"still serving", version)


async def test_an_unauthenticated_peer_hello_is_refused_and_the_node_keeps_serving(group):
    """The hello every node sent before authentication existed (no nonce, no proof)
    gets a refusal and a closed connection, is logged and counted, and never
    becomes a peer link; the node goes on serving clients."""
    before = await refused_count(group)
    raw = await open_raw(group)
    async with raw.stream:
        await raw.send(1, {"op": "peer", "from": 2, "channel": "consensus"})
        assert "unauthenticated peer hello" in await raw.refusal()
    assert await refused_count(group) == before + 1
    assert "refused a peer hello" in group.nodes[1].log_tail()
    await assert_group_serves(group, b"after-unauthenticated")


def test_a_member_holding_the_secret_gets_a_link_that_carries_messages(group):
    """With the secret the hello succeeds, and a frame sent right behind the proof, in
    the same write (as a member's link may), is read as a peer message."""
    with SyncClient(group.nodes[1].address) as client:
        before = client.status()
        message = frame_from_body(envelope_body([encode_message(FetchPayload(ref=(9, 9, 9, 0)))]))
        node = group.nodes[1]
        with socket.create_connection((node.host, node.port), timeout=READ_SECONDS) as link:
            link.sendall(say_hello(link, group, target=1, claimed=2, channel="stream") + message)
            deadline = time.monotonic() + READ_SECONDS
            while True:
                status = client.status()
                if status["peer_messages_received"] > before["peer_messages_received"]:
                    break
                assert time.monotonic() < deadline, "the member's message was never received"
                time.sleep(0.05)
    assert status["peer_hellos_accepted"] == before["peer_hellos_accepted"] + 1
    assert status["peer_hellos_refused"] == before["peer_hellos_refused"]


def test_the_peer_link_helper_opens_a_link_node_1_accepts(group):
    """tests/groups/peer_links.py, which hostile-peer tests use, really authenticates."""
    with SyncClient(group.nodes[1].address) as client:
        accepted = client.status()["peer_hellos_accepted"]
        with open_peer_link(group, target=1, claimed=3):
            deadline = time.monotonic() + READ_SECONDS
            while client.status()["peer_hellos_accepted"] != accepted + 1:
                assert time.monotonic() < deadline, "the helper's hello was never accepted"
                time.sleep(0.05)


async def test_a_hello_from_a_node_with_another_secret_is_refused(group):
    """A node holding another secret offers key ids node 1 doesn't hold: refused at
    the hello, before it sees any proof."""
    before = await refused_count(group)
    raw = await open_raw(group)
    async with raw.stream:
        await raw.send(1, handshake_as(group, STRANGER_SECRET).hello())
        assert "holds no peer secret this node holds" in await raw.refusal()
    assert await refused_count(group) == before + 1


async def test_a_proof_made_with_a_wrong_secret_is_refused(group):
    """A stranger who saw the group's key id on the wire offers it, gets the challenge,
    and proves with the secret it has: refused, closed, counted."""
    before = await refused_count(group)
    raw, hello, challenge = await challenged_stranger(group)
    async with raw.stream:
        forged = proof(STRANGER_SECRET.current, CONNECTING_LABEL,
                       transcript(cluster_id(members(group)), 2, 1, "consensus", WIRE_VERSION, hello["nonce"],
                                  challenge["nonce"]))
        await raw.send(2, {"op": "peer_proof", "proof": forged})
        assert "the proof of n2 is wrong" in await raw.refusal()
    assert await refused_count(group) == before + 1
    await assert_group_serves(group, b"after-wrong-secret")


async def test_a_proof_replayed_from_an_earlier_connection_is_refused(group):
    """Record a good handshake (here made with the secret, as a member would), then
    replay its hello and proof on a new connection: the node's nonce is new, the old
    proof does not match it, and the replay is refused."""
    status = await node_status(group)
    accepted, refused = status["peer_hellos_accepted"], status["peer_hellos_refused"]
    member = handshake_as(group, group_secrets(group), channel="stream")
    hello = member.hello()
    first = await open_raw(group)
    async with first.stream:
        await first.send(1, hello)
        recorded_proof = member.on_challenge((await first.next_answer())["ok"])
        await first.send(2, recorded_proof)

        async def authenticated() -> bool:
            return (await node_status(group))["peer_hellos_accepted"] == accepted + 1

        await wait_until(authenticated, "the genuine hello was never accepted", READ_SECONDS)
    replay = await open_raw(group)
    async with replay.stream:
        await replay.send(1, hello)
        assert (await replay.next_answer())["ok"]["nonce"] != b""
        await replay.send(2, recorded_proof)
        assert "the proof of n2 is wrong" in await replay.refusal()
    assert (await node_status(group))["peer_hellos_refused"] == refused + 1


async def test_the_hello_times_out_for_a_client_that_says_hello_and_then_nothing(group):
    """A hello that passes the first step and then never sends its proof holds the
    connection for PEER_HELLO_TIMEOUT_SECONDS, no longer."""
    before = await refused_count(group)
    raw, _, _ = await challenged_stranger(group)
    async with raw.stream:
        started = trio.current_time()
        assert f"no proof within {PEER_HELLO_TIMEOUT_SECONDS}s" in await raw.refusal()
        waited = trio.current_time() - started
    assert PEER_HELLO_TIMEOUT_SECONDS - 1 <= waited <= PEER_HELLO_TIMEOUT_SECONDS + 3, waited
    assert await refused_count(group) == before + 1


async def test_a_large_frame_during_the_hello_is_refused_at_once(group):
    """Past the hello, frames are held to PEER_HELLO_FRAME_SIZE_MAX_BYTES: a length
    prefix over it (well under the client frame limit) is refused without waiting for
    its bytes or for the timeout."""
    before = await refused_count(group)
    raw, _, _ = await challenged_stranger(group)
    async with raw.stream:
        started = trio.current_time()
        await raw.stream.send_all((1024 * 1024).to_bytes(4, "big") + bytes(4) + b"x" * 100)
        message = await raw.refusal()
    assert f"over the limit of {PEER_HELLO_FRAME_SIZE_MAX_BYTES}" in message
    assert trio.current_time() - started < PEER_HELLO_TIMEOUT_SECONDS
    assert await refused_count(group) == before + 1


async def test_members_send_nothing_to_an_impostor_on_a_members_address(tmp_path):
    """Mutual authentication: with node 3 down and an impostor listening on its
    address, nodes 1 and 2 say hello, get a challenge whose proof is wrong, and
    send the impostor no proof and no peer message; their links to n3 stay down
    and count the failures."""
    group = GroupProcesses(tmp_path / "group")
    node3 = group.nodes[3]
    received: list[dict] = []

    async def impostor(stream: trio.SocketStream) -> None:
        decoder = FrameDecoder(DEFAULT_LIMITS.frame_size_max_bytes)
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                decoder.feed(data)
                while (body := decoder.next_body()) is not None:
                    message = decode_body(body)
                    received.append(message)
                    if message.get("op") == "peer":
                        # The group's key id, seen on the wire; a proof it can't make.
                        answer = {"nonce": secrets.token_bytes(NONCE_SIZE_BYTES),
                                  "key": message["keys"][0], "proof": secrets.token_bytes(32)}
                        await stream.send_all(encode_frame({"id": message["id"], "ok": answer}))

    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(trio.serve_tcp, impostor, node3.port,
                                              host=node3.host))
        await trio.to_thread.run_sync(group.nodes[1].start)
        await trio.to_thread.run_sync(group.nodes[2].start)
        try:
            async def every_link_to_n3_failed() -> bool:
                for node_id in (1, 2):
                    links = (await node_status(group, node_id))["links"]
                    for channel in ("consensus", "stream"):
                        link = links[f"n3/{channel}"]
                        if link["connected"] or link["hellos_failed"] < 1:
                            return False
                return True

            await wait_until(every_link_to_n3_failed, "the members never tried the impostor")
            assert "did not prove it holds the group's peer secret" in group.nodes[1].log_tail()
            await assert_group_serves(group, b"with-an-impostor")
        finally:
            group.kill_all()
            nursery.cancel_scope.cancel()
    hellos = [message for message in received if message.get("op") == "peer"]
    assert hellos, "the impostor was never dialled"
    assert [message for message in received if message.get("op") != "peer"] == []
    assert key_id(group_secrets(group).current) in hellos[0]["keys"]
