"""Replica messages on the wire: CBOR with two tags, so they come back exactly.

A message is a frozen dataclass holding ints, bytes, strings, tuples (ballots,
refs, log positions) and other such dataclasses (Instance, Vote, records).
CBOR has no tuples and no classes, so:

    tag 6000: [class name, field values...]   a dataclass from messages.py
    tag 6001: [items...]                      a tuple

Decoding builds only the classes in `messages.py` (anything else is bad
input from a peer: CodecError, and the link is dropped). Tuples matter:
ballots and refs are compared with `==`, and `(1, 2) != [1, 2]`.
"""

from __future__ import annotations

import dataclasses
import enum

import cbor2

from kvsvr.replication import messages

_TAG_DATACLASS = 6000
_TAG_TUPLE = 6001
# Peer messages nest shallowly (a stream batch of records holding instances).
_NESTING_MAX = 12

_CLASSES = {
    cls.__name__: cls
    for cls in vars(messages).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls is not messages.Effects
}
_FIELD_NAMES = {
    name: tuple(field.name for field in dataclasses.fields(cls)) for name, cls in _CLASSES.items()
}
_FIELDS_BY_CLASS = {cls: _FIELD_NAMES[name] for name, cls in _CLASSES.items()}
_SCALARS = frozenset((int, bytes, str, bool, float, type(None)))
# Fields that hold an enum: sent as its value, decoded back into the enum
# (a value that is none of its members is bad input).
_ENUM_FIELDS = {"Accepted": {_FIELD_NAMES["Accepted"].index("outcome"): messages.AcceptOutcome}}


class CodecError(ValueError):
    """A peer sent bytes that are not a message we know."""


def encode_message(message: messages.Message) -> bytes:
    return cbor2.dumps(_plain(message))


def _plain(value):
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is tuple:
        return cbor2.CBORTag(_TAG_TUPLE, [_plain(item) for item in value])
    if kind is list:
        return [_plain(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    fields = _FIELDS_BY_CLASS.get(kind)
    if fields is not None:
        return cbor2.CBORTag(
            _TAG_DATACLASS, [kind.__name__, *[_plain(getattr(value, field)) for field in fields]]
        )
    assert not isinstance(value, (tuple, list)), f"no encoding for {kind.__name__}"
    return value


def _tag_hook(first, second):
    # cbor2 5 calls hook(decoder, tag); cbor2 6 calls hook(tag, immutable).
    tag = second if type(second) is cbor2.CBORTag else first
    if tag.tag == _TAG_TUPLE and isinstance(tag.value, (list, tuple)):
        return tuple(tag.value)
    if tag.tag == _TAG_DATACLASS and isinstance(tag.value, (list, tuple)) and tag.value:
        name, *fields = tag.value
        cls = _CLASSES.get(name) if isinstance(name, str) else None
        if cls is None or len(fields) != len(_FIELD_NAMES[name]):
            raise CodecError(f"unknown message shape {name!r}")
        for index, enum_type in _ENUM_FIELDS.get(name, {}).items():
            try:
                fields[index] = enum_type(fields[index])
            except (ValueError, TypeError):
                raise CodecError(f"{name}: {fields[index]!r:.40} is not a {enum_type.__name__}") from None
        return cls(*fields)
    raise CodecError(f"unexpected CBOR tag {tag.tag}")


def decode_message(body: bytes) -> messages.Message:
    try:
        message = cbor2.loads(body, tag_hook=_tag_hook, max_depth=_NESTING_MAX)
    except CodecError:
        raise
    except Exception as error:  # any decoder failure: the peer's bytes are bad
        raise CodecError(f"undecodable peer message: {error}") from None
    if type(message).__name__ not in _CLASSES:
        raise CodecError(f"a peer frame must hold a message, not {type(message).__name__}")
    return message
