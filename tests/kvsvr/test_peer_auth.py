"""The peer hello's pure parts (kvsvr/protocol/peer_auth.py) and secret files (kvsvr/shell/secret_file.py).

Both ends of the handshake are driven by hand, as the shell drives them:
what each test proves is in its docstring. The attacks (a wrong secret, a
replayed proof, a reflected proof, a proof for another channel, pair or
group) each fail here, and each has a real-process twin in
tests/groups/test_peer_authentication.py.
"""

from __future__ import annotations

import os
import stat

import pytest

from kvsvr.protocol.peer_auth import (
    ACCEPTING_LABEL,
    CONNECTING_LABEL,
    NONCE_SIZE_BYTES,
    SECRET_SIZE_MIN_BYTES,
    AcceptingHandshake,
    ConnectingHandshake,
    HelloRefused,
    PeerSecrets,
    SecretError,
    cluster_id,
    key_id,
    parse_secret,
    proof,
    transcript,
)
from kvsvr.replication.codec import WIRE_VERSION
from kvsvr.shell.secret_file import MADE_SECRET_SIZE_BYTES, read_secret_file, write_secret_file

MEMBERS = {1: ("127.0.0.1", 7421), 2: ("127.0.0.2", 7421), 3: ("127.0.0.3", 7421)}
CLUSTER = cluster_id(MEMBERS)
CHANNELS = ("consensus", "stream")
SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(100, 132))
GROUP_SECRETS = PeerSecrets(SECRET)


def nonce(number: int) -> bytes:
    return number.to_bytes(NONCE_SIZE_BYTES, "big")


def accepting(secrets: PeerSecrets = GROUP_SECRETS, own_id: int = 1,
              number: int = 1000, cluster: bytes = CLUSTER) -> AcceptingHandshake:
    return AcceptingHandshake(secrets, cluster, own_id, MEMBERS, CHANNELS, nonce(number),
                              WIRE_VERSION)


def connecting(secrets: PeerSecrets = GROUP_SECRETS, own_id: int = 2, peer_id: int = 1,
               channel: str = "consensus", number: int = 2000,
               cluster: bytes = CLUSTER) -> ConnectingHandshake:
    return ConnectingHandshake(secrets, cluster, own_id, peer_id, channel, nonce(number),
                               WIRE_VERSION)


def run_handshake(server: AcceptingHandshake, client: ConnectingHandshake) -> int:
    challenge = server.on_hello(client.hello())
    return server.on_proof(client.on_challenge(challenge))


# -- the handshake ---------------------------------------------------------------


def test_two_members_holding_the_secret_authenticate_each_other():
    """The whole exchange with one secret: the accepting end learns the connecting
    node's id only once its proof checks out."""
    server = accepting()
    assert run_handshake(server, connecting()) == 2
    assert server.channel == "consensus"


def test_a_hello_without_nonce_and_key_ids_is_refused():
    """The hello peers sent before authentication existed is refused outright."""
    with pytest.raises(HelloRefused, match="unauthenticated peer hello"):
        accepting().on_hello({"op": "peer", "from": 2, "channel": "consensus"})


@pytest.mark.parametrize(
    "change, words",
    [
        ({"from": 9}, "not in this group"),
        ({"from": 1}, "not in this group"),  # the accepting node itself
        ({"from": True}, "not in this group"),
        ({"channel": "gossip"}, "names no channel"),
        ({"nonce": b"short"}, "'nonce' is not 32 bytes"),
        ({"nonce": "x" * 32}, "'nonce' is not 32 bytes"),
        ({"keys": []}, "list of 1 to 2 key ids"),
        ({"keys": [b"a", b"b", b"c"]}, "list of 1 to 2 key ids"),
        ({"keys": key_id(SECRET)}, "list of 1 to 2 key ids"),
    ],
    ids=["stranger", "itself", "bool-id", "channel", "short-nonce", "text-nonce",
         "no-keys", "three-keys", "keys-not-a-list"],
)
def test_a_malformed_hello_is_refused_naming_the_field(change, words):
    hello = {**connecting().hello(), **change}
    with pytest.raises(HelloRefused, match=words):
        accepting().on_hello(hello)


def test_a_hello_offering_only_another_secret_is_refused_before_any_proof():
    """A node holding a different secret gets no proof to study: the key ids it
    offers match nothing the accepting node holds."""
    with pytest.raises(HelloRefused, match="holds no peer secret this node holds"):
        accepting().on_hello(connecting(PeerSecrets(OTHER_SECRET)).hello())


def test_a_proof_made_with_a_wrong_secret_is_refused():
    """Key ids are public (they cross the wire), so a stranger can offer the right
    one; without the secret its proof is still wrong."""
    server = accepting()
    hello = {**connecting(PeerSecrets(OTHER_SECRET)).hello(), "keys": [key_id(SECRET)]}
    challenge = server.on_hello(hello)
    forged = proof(OTHER_SECRET, CONNECTING_LABEL,
                   transcript(CLUSTER, 2, 1, "consensus", WIRE_VERSION, hello["nonce"],
                              challenge["nonce"]))
    with pytest.raises(HelloRefused, match="proof of n2 is wrong"):
        server.on_proof({"op": "peer_proof", "proof": forged})


def test_a_proof_replayed_from_an_earlier_connection_is_refused():
    """An attacker who recorded a whole good handshake sends the same hello and the
    same proof on a new connection: the accepting node's nonce is new, so the old
    proof does not match."""
    client = connecting()
    first = accepting(number=1)
    recorded_hello = client.hello()
    recorded_proof = client.on_challenge(first.on_hello(recorded_hello))
    assert first.on_proof(recorded_proof) == 2
    second = accepting(number=2)
    second.on_hello(recorded_hello)
    with pytest.raises(HelloRefused, match="proof of n2 is wrong"):
        second.on_proof(recorded_proof)


def test_the_accepting_nodes_own_proof_sent_back_is_refused():
    """Reflection: a stranger says hello, receives the accepting node's proof, and
    returns it as its own. The labels differ, so it can't pass."""
    server = accepting()
    challenge = server.on_hello(connecting().hello())
    with pytest.raises(HelloRefused, match="is wrong"):
        server.on_proof({"op": "peer_proof", "proof": challenge["proof"]})


def test_the_connecting_node_refuses_an_accepting_node_without_the_secret():
    """Mutual: an impostor on a member's address (or on the path) answers the hello
    with a proof it can't make right, and gets no proof back."""
    client = connecting()
    impostor = accepting(PeerSecrets(OTHER_SECRET))
    challenge = impostor.on_hello({**client.hello(), "keys": [key_id(OTHER_SECRET)]})
    with pytest.raises(HelloRefused, match="chose a key this node did not offer"):
        client.on_challenge(challenge)
    forged = {**challenge, "key": key_id(SECRET)}
    with pytest.raises(HelloRefused, match="did not prove it holds the group's peer secret"):
        client.on_challenge(forged)


def test_an_accepting_proof_replayed_to_a_new_hello_is_refused():
    """A recorded answer of the accepting node is worthless to the next connecting
    node: its own nonce is new."""
    recorded = accepting().on_hello(connecting(number=1).hello())
    with pytest.raises(HelloRefused, match="did not prove"):
        connecting(number=2).on_challenge(recorded)


@pytest.mark.parametrize(
    "server_options, client_options",
    [
        ({"own_id": 3}, {"peer_id": 3, "channel": "stream"}),  # proof for another channel
        ({"own_id": 3}, {}),  # a proof made for n2 -> n1, shown to n3
        ({"cluster": cluster_id({**MEMBERS, 3: ("127.0.0.9", 7421)})}, {}),  # another group
    ],
    ids=["channel", "pair", "group"],
)
def test_a_proof_is_bound_to_its_channel_pair_and_group(server_options, client_options):
    """A client's proof made for one (group, from, to, channel) is refused for another."""
    client = connecting(**client_options)
    honest = accepting(**{"own_id": client_options.get("peer_id", 1)})
    hello = client.hello()
    challenge = honest.on_hello(hello)
    good_proof = client.on_challenge(challenge)
    elsewhere = accepting(**server_options, number=1000)  # the same nonce: only the binding differs
    hello_elsewhere = {**hello, "channel": "consensus"}
    elsewhere.on_hello(hello_elsewhere)
    with pytest.raises(HelloRefused):
        elsewhere.on_proof(good_proof)


def test_the_proof_message_must_be_the_peers_proof():
    server = accepting()
    server.on_hello(connecting().hello())
    with pytest.raises(HelloRefused, match="expected the peer's proof"):
        server.on_proof({"op": "put", "proof": bytes(32)})
    with pytest.raises(HelloRefused, match="'proof' is not 32 bytes"):
        server.on_proof({"op": "peer_proof", "proof": b"\0" * 1000})


# -- rotation --------------------------------------------------------------------


NEW = bytes(range(50, 82))
OLD = SECRET


@pytest.mark.parametrize(
    "server_secrets, client_secrets",
    [
        (PeerSecrets(NEW, OLD), PeerSecrets(OLD)),
        (PeerSecrets(OLD), PeerSecrets(NEW, OLD)),
        (PeerSecrets(NEW, OLD), PeerSecrets(NEW, OLD)),
        (PeerSecrets(NEW), PeerSecrets(NEW, OLD)),
    ],
    ids=["rotated-accepts-old", "old-accepts-rotated", "both-rotated", "new-accepts-rotated"],
)
def test_during_a_rotation_nodes_with_a_secret_in_common_authenticate(server_secrets,
                                                                     client_secrets):
    """A node given the new secret and the previous one talks to nodes still on the
    previous one, and to nodes already on the new one, either way round."""
    assert run_handshake(accepting(server_secrets), connecting(client_secrets)) == 2


def test_the_accepting_node_chooses_its_current_secret_when_the_peer_holds_it():
    challenge = accepting(PeerSecrets(NEW, OLD)).on_hello(connecting(PeerSecrets(OLD, NEW)).hello())
    assert challenge["key"] == key_id(NEW)


def test_nodes_with_no_secret_in_common_do_not_authenticate():
    """Once the previous secret is dropped, a node that never got the new one is out."""
    with pytest.raises(HelloRefused, match="holds no peer secret"):
        run_handshake(accepting(PeerSecrets(NEW)), connecting(PeerSecrets(OLD)))


# -- the parts ---------------------------------------------------------------------


def test_the_transcript_is_unambiguous():
    """Length prefixes: moving bytes from one field to the next changes the transcript,
    so two different hellos never share a proof."""
    base = transcript(CLUSTER, 12, 3, "stream", 2, nonce(1), nonce(2))
    assert base != transcript(CLUSTER, 1, 23, "stream", 2, nonce(1), nonce(2))
    assert base != transcript(CLUSTER, 12, 3, "stream", 2, nonce(2), nonce(1))
    assert base != transcript(CLUSTER, 12, 3, "stream", 3, nonce(1), nonce(2))
    assert proof(SECRET, ACCEPTING_LABEL, base) != proof(SECRET, CONNECTING_LABEL, base)


def test_the_cluster_id_depends_on_the_member_list_only():
    reordered = dict(reversed(list(MEMBERS.items())))
    assert cluster_id(reordered) == CLUSTER
    assert cluster_id({**MEMBERS, 3: ("127.0.0.3", 7422)}) != CLUSTER


def test_key_ids_are_short_and_differ_between_secrets():
    assert len(key_id(SECRET)) == 8
    assert key_id(SECRET) != key_id(OTHER_SECRET)
    assert key_id(SECRET) not in SECRET


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "it is empty"),
        (b" \n\t", "it is empty"),
        (b"not hex at all", "does not hold hex digits"),
        (b"abc", "does not hold hex digits"),  # odd length
        (b"\xff\xfe", "does not hold hex digits"),
        (b"00" * (SECRET_SIZE_MIN_BYTES - 1), "holds 15 bytes; a peer secret needs at least 16"),
    ],
    ids=["empty", "blank", "text", "odd", "binary", "short"],
)
def test_a_secret_that_must_not_be_used_is_refused(content, words):
    with pytest.raises(SecretError, match=words):
        parse_secret(content)


def test_a_secret_of_the_minimum_size_with_a_newline_is_read():
    assert parse_secret(b"ab" * SECRET_SIZE_MIN_BYTES + b"\n") == b"\xab" * SECRET_SIZE_MIN_BYTES


# -- secret files -------------------------------------------------------------------


def test_make_secret_writes_a_fresh_random_secret_only_its_owner_can_read(tmp_path):
    old_umask = os.umask(0)  # the file is 0600 whatever the umask
    try:
        write_secret_file(str(tmp_path / "a"))
    finally:
        os.umask(old_umask)
    write_secret_file(str(tmp_path / "b"))
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o600
    first, second = (read_secret_file(str(tmp_path / name)) for name in "ab")
    assert len(first) == MADE_SECRET_SIZE_BYTES and first != second


def test_make_secret_never_overwrites_a_secret(tmp_path):
    path = tmp_path / "secret"
    write_secret_file(str(path))
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_secret_file(str(path))
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o666])
def test_a_secret_file_others_can_read_or_change_is_refused(tmp_path, mode):
    path = tmp_path / "secret"
    write_secret_file(str(path))
    path.chmod(mode)
    with pytest.raises(SecretError, match=f"its mode {mode:04o} lets group or others"):
        read_secret_file(str(path))


def test_a_secret_file_that_is_missing_a_link_or_a_directory_is_refused(tmp_path):
    with pytest.raises(SecretError, match="cannot open it"):
        read_secret_file(str(tmp_path / "missing"))
    write_secret_file(str(tmp_path / "real"))
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(SecretError, match="cannot open it"):
        read_secret_file(str(tmp_path / "link"))
    (tmp_path / "directory").mkdir(mode=0o700)
    with pytest.raises(SecretError, match="not a regular file"):
        read_secret_file(str(tmp_path / "directory"))


def test_a_huge_secret_file_is_refused(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"00" * 10_000)
    path.chmod(0o600)
    with pytest.raises(SecretError, match="one line of hex digits"):
        read_secret_file(str(path))


def test_a_refusal_quotes_a_huge_field_cut_short():
    """What the stranger sent is quoted in the log and on the wire, but never at the
    length it chose."""
    with pytest.raises(HelloRefused) as refused:
        accepting().on_hello({**connecting().hello(), "from": "n" * 1_000_000})
    assert len(refused.value.reason) < 100 and refused.value.reason.endswith("...")
