"""Frames on the wire: length, crc32c, CBOR body. Sans-IO, used by both ends.

Theory. A connection carries a stream of frames in each direction:

    u32 body length | u32 crc32c(body) | body (CBOR map)      (big-endian)

A request body is `{"id": int, "op": str, ...fields}`; its answer is
`{"id": same, "ok": {...}}` or `{"id": same, "error": {"code", "message",
...}}`. Ids let one connection carry many requests in flight, answered in
any order. Both ends write several frames with one send when they can.

Bad input is sorted by what it breaks:
- A length over the limit or a checksum mismatch breaks the framing: the
  stream can't be trusted past it. `FrameDecoder` raises FrameError; the
  receiver answers once (id 0) and closes the connection.
- A well-framed body that is not a CBOR map with an integer id is answered
  `bad_request` (with id 0 when no id can be read) and the connection goes
  on: the next frame starts where this one ended.
"""

from __future__ import annotations

import struct

import cbor2
import crc32c

from kvsvr.protocol.errors import BadRequest, KvError, TooLarge

_HEADER = struct.Struct(">II")
HEADER_SIZE_BYTES = _HEADER.size
# Ids are unsigned 63-bit; 0 answers a frame whose id could not be read.
REQUEST_ID_MAX = 2**63 - 1
# Containers a body may nest (a request is a map holding lists of pairs).
BODY_NESTING_MAX = 8


class FrameError(KvError):
    """The framing is broken (oversized length or checksum mismatch)."""

    def __init__(self, error: KvError):
        super().__init__(error.message)
        self.error = error
        self.code = error.code


def encode_frame(body: dict) -> bytes:
    return frame_from_body(cbor2.dumps(body))


def frame_from_body(payload: bytes) -> bytes:
    """A frame around an already encoded body."""
    return _HEADER.pack(len(payload), crc32c.crc32c(payload)) + payload


class FrameDecoder:
    """Feed bytes in, take whole frame bodies out."""

    def __init__(self, frame_size_max_bytes: int):
        self.frame_size_max_bytes = frame_size_max_bytes
        self._buffer = bytearray()
        self._offset = 0

    def feed(self, data: bytes) -> None:
        if self._offset:
            del self._buffer[: self._offset]
            self._offset = 0
        self._buffer += data

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._offset

    def take_buffered(self) -> bytes:
        """The bytes fed and not yet taken as frames, removed from this decoder
        (to hand the rest of a stream to a decoder with another frame limit)."""
        rest = bytes(self._buffer[self._offset :])
        self._buffer.clear()
        self._offset = 0
        return rest

    def next_body(self) -> bytes | None:
        """The next whole frame's body, None if more bytes are needed."""
        buffer = self._buffer
        offset = self._offset
        if len(buffer) - offset < HEADER_SIZE_BYTES:
            return None
        length, checksum = _HEADER.unpack_from(buffer, offset)
        if length > self.frame_size_max_bytes:
            raise FrameError(
                TooLarge(f"frame of {length} bytes is over the limit of {self.frame_size_max_bytes}")
            )
        end = offset + HEADER_SIZE_BYTES + length
        if len(buffer) < end:
            return None
        body = bytes(buffer[offset + HEADER_SIZE_BYTES : end])
        self._offset = end
        if crc32c.crc32c(body) != checksum:
            raise FrameError(BadRequest("frame checksum mismatch"))
        return body


def decode_body(body: bytes) -> dict:
    """Decode a request body into a map with an integer `id` >= 1, or raise BadRequest.

    On BadRequest the id (if one could be read) is in the exception's
    `request_id` attribute, so the answer can name it.
    """
    return _decode_map(body, id_minimum=1)


def decode_answer(body: bytes) -> dict:
    """Decode an answer body: like a request's, but id 0 is allowed (it answers a
    frame whose id could not be read, or refuses the connection)."""
    return _decode_map(body, id_minimum=0)


def _decode_map(body: bytes, id_minimum: int) -> dict:
    try:
        message = cbor2.loads(
            body,
            max_depth=BODY_NESTING_MAX,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        )
    except Exception as error:  # any decoder failure is the sender's malformed body
        raise _with_id(BadRequest(f"undecodable CBOR body: {error}"), 0) from None
    if not isinstance(message, dict):
        raise _with_id(BadRequest("a frame body must be a CBOR map"), 0)
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int):
        raise _with_id(BadRequest("a frame body needs an integer 'id'"), 0)
    if not id_minimum <= request_id <= REQUEST_ID_MAX:
        raise _with_id(BadRequest(f"id must be in [{id_minimum}, {REQUEST_ID_MAX}]"), 0)
    return message


def _with_id(error: BadRequest, request_id: int) -> BadRequest:
    error.request_id = request_id  # type: ignore[attr-defined]
    return error


def answer_frame(request_id: int, result: dict) -> bytes:
    return encode_frame({"id": request_id, "ok": result})


def error_frame(request_id: int, error: KvError) -> bytes:
    return encode_frame({"id": request_id, "error": error.to_wire()})
