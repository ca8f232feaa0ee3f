"""The peer hello: how two members of a replica group prove they belong to it.

Theory of operation. Every member of a group holds the same secret (a
file given to `kvsvr serve --peer-secret-file`, see secret_file.py). A
connection on the client port becomes a peer link only after both ends
proved they hold the secret, without sending it (HMAC-SHA256
challenge-response, mutual):

    connecting node F                              accepting node T
    {"op": "peer", "from": F, "channel": C,
     "wire": W, "nonce": Nf, "keys": [K, ...]} ->
                                               <-  {"nonce": Nt, "key": K,
                                                    "proof": HMAC(S_K, ACCEPTING | t)}
    checks T's proof
    {"op": "peer_proof",
     "proof": HMAC(S_K, CONNECTING | t)}        ->
                                                   checks F's proof; the link is up

    t = the group's cluster id, F, T, C, W, Nf, Nt   (each length-prefixed)

Why each part is there:

- Only a holder of the secret can compute a proof; proofs are compared with
  `hmac.compare_digest`, so the time a comparison takes says nothing of
  where a wrong proof first differs.
- Each end's nonce is fresh for each connection (32 random bytes the shell
  draws), so a proof recorded on one connection is worthless on another:
  the other end's nonce differs (replay).
- The two labels differ, so the accepting node's proof can never be sent
  back to it as the connecting node's proof (reflection), even when an
  attacker chooses the connecting nonce.
- F, T and C are in t: a proof for n2 -> n1 on the consensus channel is not
  one for n3 -> n1, nor for n2's stream channel, nor for n1 -> n2.
- W is the version of the peer wire format (replication/codec.py): a
  member that speaks another version is refused at the hello, in words
  that say so, instead of misreading frames. It is in t too, so nobody
  can rewrite it on the way.
- The cluster id is a hash of the member list: a secret reused by two
  groups does not let a member of one pass as a member of the other.
- Key ids (a truncated HMAC of a constant, so naming a key says nothing of
  it) let a node hold two secrets while the group rotates: the connecting
  node offers the ids of the secrets it holds, the accepting node picks the
  first of its own (current before previous) that is offered, and both
  prove with that one.

A failure raises `HelloRefused`; the shell closes the connection and
counts it. This module is sans-IO: nonces come in as arguments, and no
clock or socket is touched; the shell bounds the hello in time and bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
from collections.abc import Collection, Mapping

# Every proof and key id is over this, so nothing else keyed with the
# same secret (now or in a later version of the hello) can collide with it.
_DOMAIN = b"kvsvr peer hello v1"
ACCEPTING_LABEL = _DOMAIN + b": accepting node's proof"
CONNECTING_LABEL = _DOMAIN + b": connecting node's proof"
_KEY_ID_LABEL = _DOMAIN + b": key id"
_CLUSTER_ID_LABEL = _DOMAIN + b": cluster id"

# 256-bit nonces: a repeat is never expected, however many connections.
NONCE_SIZE_BYTES = 32
PROOF_SIZE_BYTES = hashlib.sha256().digest_size
KEY_ID_SIZE_BYTES = 8
# 128 bits: far past guessing, online or offline from a recorded proof.
SECRET_SIZE_MIN_BYTES = 16
# Current and previous: enough for a rolling rotation, one at a time.
SECRETS_HELD_MAX = 2
# What a refusal quotes of a field the stranger chose (it goes to a log line
# and back on the wire, so it must not be as long as the stranger likes).
QUOTED_SIZE_MAX_CHARACTERS = 40


class HelloRefused(Exception):
    """The other end is not (or did not prove it is) a member of this group."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SecretError(ValueError):
    """A peer secret that must not be used (empty, short, not hex)."""


@dataclasses.dataclass(frozen=True)
class PeerSecrets:
    """The secrets a node proves with: the current one, and during a rotation
    the previous one, still accepted."""

    current: bytes
    previous: bytes | None = None

    def __post_init__(self) -> None:
        # Checked at the edge (parse_secret) before they get here.
        for secret in self.held():
            assert len(secret) >= SECRET_SIZE_MIN_BYTES, "a peer secret is too short"

    def held(self) -> list[bytes]:
        """The secrets, current first."""
        return [self.current] + ([self.previous] if self.previous is not None else [])

    def key_ids(self) -> list[bytes]:
        return [key_id(secret) for secret in self.held()]

    def with_key_id(self, wanted: bytes) -> bytes | None:
        for secret in self.held():
            if hmac.compare_digest(key_id(secret), wanted):
                return secret
        return None


def parse_secret(content: bytes) -> bytes:
    """The secret a secret file holds: hex digits (surrounding whitespace
    ignored), at least SECRET_SIZE_MIN_BYTES once decoded. Raises SecretError."""
    text = content.strip()
    if not text:
        raise SecretError("it is empty")
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise SecretError("it does not hold hex digits (make one with `kvsvr make-secret`)") from None
    if len(secret) < SECRET_SIZE_MIN_BYTES:
        raise SecretError(
            f"it holds {len(secret)} bytes; a peer secret needs at least {SECRET_SIZE_MIN_BYTES} "
            f"({2 * SECRET_SIZE_MIN_BYTES} hex digits)"
        )
    return secret


def key_id(secret: bytes) -> bytes:
    """A name for a secret that reveals nothing of it."""
    return hmac.digest(secret, _KEY_ID_LABEL, "sha256")[:KEY_ID_SIZE_BYTES]


def cluster_id(members: Mapping[int, tuple[str, int]]) -> bytes:
    """A digest of the group's member list (ids and addresses, in id order):
    every member computes the same one from the same `--group`."""
    listing = ",".join(f"{node}={host}:{port}" for node, (host, port) in sorted(members.items()))
    return hashlib.sha256(_CLUSTER_ID_LABEL + b"\0" + listing.encode()).digest()


def transcript(
    cluster: bytes, from_id: int, to_id: int, channel: str, wire_version: int,
    connecting_nonce: bytes, accepting_nonce: bytes,
) -> bytes:
    """Everything a proof vouches for, each field length-prefixed so that no two
    different hellos give the same bytes."""
    fields = [cluster, b"%d" % from_id, b"%d" % to_id, channel.encode(), b"%d" % wire_version,
              connecting_nonce, accepting_nonce]
    return b"".join(struct.pack(">I", len(field)) + field for field in fields)


def proof(secret: bytes, label: bytes, hello_transcript: bytes) -> bytes:
    return hmac.digest(secret, label + b"\0" + hello_transcript, "sha256")


def quoted(value: object) -> str:
    """repr(value), cut to QUOTED_SIZE_MAX_CHARACTERS."""
    text = repr(value)
    if len(text) <= QUOTED_SIZE_MAX_CHARACTERS:
        return text
    return text[: QUOTED_SIZE_MAX_CHARACTERS - 3] + "..."


def _bytes_field(message: Mapping, name: str, size: int) -> bytes:
    value = message.get(name)
    if not isinstance(value, bytes) or len(value) != size:
        raise HelloRefused(f"the hello's {name!r} is not {size} bytes")
    return value


class AcceptingHandshake:
    """The accepting end: take the hello, answer the challenge, check the proof."""

    def __init__(self, secrets: PeerSecrets, cluster: bytes, own_id: int,
                 members: Collection[int], channels: Collection[str], nonce: bytes,
                 wire_version: int):
        assert len(nonce) == NONCE_SIZE_BYTES
        self._wire_version = wire_version
        self._secrets = secrets
        self._cluster = cluster
        self._own_id = own_id
        self._members = members
        self._channels = channels
        self._nonce = nonce
        self._expected: bytes | None = None
        self.source: int | None = None  # the id the hello claims, once read
        self.channel: str | None = None

    def on_hello(self, hello: Mapping) -> dict:
        """The answer to a hello: this end's nonce and proof. Raises HelloRefused."""
        assert self._expected is None, "one hello per handshake"
        source = hello.get("from")
        if isinstance(source, bool) or not isinstance(source, int) or source not in self._members \
                or source == self._own_id:
            raise HelloRefused(f"peer hello from a node not in this group: {quoted(source)}")
        channel = hello.get("channel")
        if channel not in self._channels:
            raise HelloRefused(f"peer hello names no channel: {quoted(channel)}")
        self.source, self.channel = source, channel
        if "nonce" not in hello or "keys" not in hello:
            raise HelloRefused("unauthenticated peer hello (no nonce or key ids): "
                               "every member needs the group's peer secret")
        wire = hello.get("wire", 1)  # the first format's hello did not say
        if wire != self._wire_version:
            raise HelloRefused(
                f"n{source} speaks peer wire version {quoted(wire)}, this node "
                f"{self._wire_version}: every member of a group must run the same version"
            )
        connecting_nonce = _bytes_field(hello, "nonce", NONCE_SIZE_BYTES)
        offered = hello.get("keys")
        if not isinstance(offered, list) or not 1 <= len(offered) <= SECRETS_HELD_MAX \
                or not all(isinstance(key, bytes) for key in offered):
            raise HelloRefused(f"the hello's 'keys' is not a list of 1 to {SECRETS_HELD_MAX} key ids")
        # Our own order decides: the current secret whenever the peer holds it.
        chosen = next((secret for secret in self._secrets.held() if key_id(secret) in offered),
                      None)
        if chosen is None:
            raise HelloRefused(f"n{source} holds no peer secret this node holds "
                               "(a different --peer-secret-file?)")
        hello_transcript = transcript(self._cluster, source, self._own_id, channel,
                                      self._wire_version, connecting_nonce, self._nonce)
        self._expected = proof(chosen, CONNECTING_LABEL, hello_transcript)
        return {"nonce": self._nonce, "key": key_id(chosen),
                "proof": proof(chosen, ACCEPTING_LABEL, hello_transcript)}

    def on_proof(self, message: Mapping) -> int:
        """Check the connecting node's proof; returns its id, now authenticated."""
        assert self._expected is not None and self.source is not None, "proof before the hello"
        if message.get("op") != "peer_proof":
            raise HelloRefused(f"expected the peer's proof, got {quoted(message.get('op'))}")
        given = _bytes_field(message, "proof", PROOF_SIZE_BYTES)
        if not hmac.compare_digest(given, self._expected):
            raise HelloRefused(f"the proof of n{self.source} is wrong "
                               "(a different secret, or a proof replayed from another connection)")
        return self.source


class ConnectingHandshake:
    """The connecting end: say hello, check the accepting node's proof, prove."""

    def __init__(self, secrets: PeerSecrets, cluster: bytes, own_id: int, peer_id: int,
                 channel: str, nonce: bytes, wire_version: int):
        assert len(nonce) == NONCE_SIZE_BYTES
        self._wire_version = wire_version
        self._secrets = secrets
        self._cluster = cluster
        self._own_id = own_id
        self._peer_id = peer_id
        self._channel = channel
        self._nonce = nonce

    def hello(self) -> dict:
        return {"op": "peer", "from": self._own_id, "channel": self._channel,
                "wire": self._wire_version, "nonce": self._nonce,
                "keys": self._secrets.key_ids()}

    def on_challenge(self, answer: Mapping) -> dict:
        """The proof to send once the accepting node proved itself. Raises HelloRefused."""
        accepting_nonce = _bytes_field(answer, "nonce", NONCE_SIZE_BYTES)
        given = _bytes_field(answer, "proof", PROOF_SIZE_BYTES)
        chosen_id = answer.get("key")
        secret = self._secrets.with_key_id(chosen_id) if isinstance(chosen_id, bytes) else None
        if secret is None:
            raise HelloRefused(f"n{self._peer_id} chose a key this node did not offer")
        hello_transcript = transcript(self._cluster, self._own_id, self._peer_id, self._channel,
                                      self._wire_version, self._nonce, accepting_nonce)
        if not hmac.compare_digest(given, proof(secret, ACCEPTING_LABEL, hello_transcript)):
            raise HelloRefused(f"n{self._peer_id} did not prove it holds the group's peer secret")
        return {"op": "peer_proof", "proof": proof(secret, CONNECTING_LABEL, hello_transcript)}


__all__ = [
    "AcceptingHandshake",
    "ConnectingHandshake",
    "HelloRefused",
    "PeerSecrets",
    "SecretError",
    "cluster_id",
    "key_id",
    "parse_secret",
    "quoted",
]
