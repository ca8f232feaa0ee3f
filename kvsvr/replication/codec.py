"""Replica messages on the wire: msgpack arrays, decoded straight into checked types.

Theory. Every message is a frozen `msgspec.Struct` (messages.py) encoded as
a msgpack array: its tag first (which message), then its fields in order;
the values inside it (an Instance, a Vote, a log record) are arrays too.
Decoding is done in C by msgspec against the message types themselves, so
a peer's frame becomes a message only if every field has its declared
type: a ballot is three integers, a key is bytes, an outcome is one of
AcceptOutcome's values, an optional field is the type or nil. Anything
else (an unknown tag, a missing or extra field, a string where bytes
belong, an integer out of 64 bits) is a `CodecError`, and the shell drops
that peer's link. What types cannot say (a ballot naming a member, a
version that follows the decided one) is checked next, by peer_input.py,
before the core acts on the message.

An *envelope* is what one peer link sends in one frame: a msgpack array
of messages, each encoded once when it was queued (`encode_message`), so
the link joins their bytes behind one array header and the receiver
decodes the whole envelope in one call. The bytes of an envelope are
bounded by the link (shell/replica_node.py), and never exceed a frame.

`WIRE_VERSION` names this format in the peer hello: members that speak
different versions refuse each other's links instead of misreading them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import msgspec

from kvsvr.replication import messages

WIRE_VERSION = 2

_ENCODER = msgspec.msgpack.Encoder()
_MESSAGE_DECODER = msgspec.msgpack.Decoder(messages.Message)
_ENVELOPE_DECODER = msgspec.msgpack.Decoder(list[messages.Message])
# msgpack array headers: fixarray, array 16, array 32.
_FIXARRAY_COUNT_MAX = 15
_ARRAY16 = struct.Struct(">BH")
_ARRAY32 = struct.Struct(">BI")
ENVELOPE_HEADER_SIZE_MAX_BYTES = _ARRAY32.size


class CodecError(ValueError):
    """A peer sent bytes that are not a message (or an envelope) we know."""


def encode_message(message: messages.Message) -> bytes:
    return _ENCODER.encode(message)


def decode_message(body: bytes) -> messages.Message:
    try:
        return _MESSAGE_DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise CodecError(f"undecodable peer message: {error}") from None


def envelope_body(encoded_messages: Sequence[bytes]) -> bytes:
    """One envelope from messages already encoded by `encode_message`."""
    count = len(encoded_messages)
    if count <= _FIXARRAY_COUNT_MAX:
        header = bytes((0x90 | count,))
    elif count <= 0xFFFF:
        header = _ARRAY16.pack(0xDC, count)
    else:
        header = _ARRAY32.pack(0xDD, count)
    return header + b"".join(encoded_messages)


def decode_envelope(body: bytes) -> list[messages.Message]:
    try:
        return _ENVELOPE_DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise CodecError(f"undecodable peer envelope: {error}") from None
