"""Where chat state lives in the store, and how its records are encoded.

Theory of operation. chat_service keeps nothing of its own: every fact is a
key in the store, under the prefix `chat/`, and any number of instances
share them. This module is the one place that names those keys and encodes
their records, with no IO (it is imported by the checker and the bench too).

    chat/account/{user}              KV     profile (JSON); its version is the
                                            sync snapshot's `account`
    chat/contacts/{user}             table  row {contact} -> JSON; `contacts`
    chat/groups/{user}               table  row {group} -> JSON; `groups`
    chat/group/{group}               KV     group profile (JSON)
    chat/members/{group}             table  row {user} -> {"joined_seq": n}
    chat/message/{message_id}        KV     the message body, stored once
    chat/placed/{message_id}         KV     the message's canonical log seq,
                                            written once (create-if-absent)
    chat/fanout/{channel}/cursor     KV     seq up to which fan-out is done
    chat/fanout/{channel}/lease      KV     which instance drains the channel
    chat/fanout/{channel}/log        table  append-only: row seq -> message id
    chat/inbox/{user}                table  e/{channel}/{seq} -> entry,
                                            m/{channel} -> last delivered seq,
                                            t -> trimmed-through version;
                                            its version is `inbox`
    chat/presence/{user}             KV     online/offline and expiry (JSON)
    chat/notify/{shard}              table  row {user} -> a change counter

A *channel* is what a message is sent to: `g:{group}` for a group, and
`d:{a}:{b}` (the two users in byte order) for a one-to-one conversation.
Both go through the same fan-out (fanout.py).

Identifiers (users, groups, message ids) are 1 to 64 characters of
`[A-Za-z0-9_-]`, so they can be embedded in keys and channel names without
escaping: `/` and `:` never occur inside one.
"""

from __future__ import annotations

import dataclasses
import json
import re
import zlib

IDENTIFIER_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
PREFIX = b"chat/"
FANOUT_PREFIX = PREFIX + b"fanout/"
# Shards of the notify tables: a waiting client's instance polls only the
# shards its waiters hash to, so the cost of push is per shard, not per user.
NOTIFY_SHARDS = 16

ENTRY_ROW_PREFIX = b"e/"
MARKER_ROW_PREFIX = b"m/"
TRIM_ROW = b"t"


class BadIdentifier(ValueError):
    pass


def check_identifier(text: str, what: str = "identifier") -> str:
    if not isinstance(text, str) or not _IDENTIFIER.match(text):
        raise BadIdentifier(f"{what} {text!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return text


# -- channels ----------------------------------------------------------------------


def group_channel(group: str) -> str:
    return f"g:{group}"


def direct_channel(user_a: str, user_b: str) -> str:
    first, second = sorted((user_a, user_b))
    return f"d:{first}:{second}"


@dataclasses.dataclass(frozen=True, slots=True)
class Channel:
    kind: str  # "group" or "direct"
    group: str | None
    users: tuple[str, ...]  # the two users of a direct channel (one if they are the same)


def parse_channel(channel: str) -> Channel:
    kind, _, rest = channel.partition(":")
    if kind == "g":
        return Channel("group", check_identifier(rest, "group"), ())
    if kind == "d":
        first, _, second = rest.partition(":")
        users = (check_identifier(first, "user"), check_identifier(second, "user"))
        return Channel("direct", None, tuple(sorted(set(users))))
    raise BadIdentifier(f"channel {channel!r} is neither g:GROUP nor d:USER:USER")


# -- keys ----------------------------------------------------------------------------


def account_key(user: str) -> bytes:
    return PREFIX + b"account/" + user.encode()


def contacts_key(user: str) -> bytes:
    return PREFIX + b"contacts/" + user.encode()


def groups_key(user: str) -> bytes:
    return PREFIX + b"groups/" + user.encode()


def group_key(group: str) -> bytes:
    return PREFIX + b"group/" + group.encode()


def members_key(group: str) -> bytes:
    return PREFIX + b"members/" + group.encode()


def message_key(message_id: str) -> bytes:
    return PREFIX + b"message/" + message_id.encode()


def placed_key(message_id: str) -> bytes:
    return PREFIX + b"placed/" + message_id.encode()


def fanout_key(channel: str, part: str) -> bytes:
    assert part in ("cursor", "lease", "log"), part
    return FANOUT_PREFIX + channel.encode() + b"/" + part.encode()


def split_fanout_key(key: bytes) -> tuple[str, str] | None:
    """(channel, part) of a `chat/fanout/...` key, or None for anything else."""
    if not key.startswith(FANOUT_PREFIX):
        return None
    channel, _, part = key[len(FANOUT_PREFIX):].decode(errors="replace").rpartition("/")
    return (channel, part) if channel and part in ("cursor", "lease", "log") else None


def inbox_key(user: str) -> bytes:
    return PREFIX + b"inbox/" + user.encode()


def presence_key(user: str) -> bytes:
    return PREFIX + b"presence/" + user.encode()


def notify_shard(user: str) -> int:
    return zlib.crc32(user.encode()) % NOTIFY_SHARDS


def notify_key(shard: int) -> bytes:
    assert 0 <= shard < NOTIFY_SHARDS
    return PREFIX + b"notify/%02d" % shard


# -- inbox rows ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class InboxEntry:
    """An index entry: message `message_id` is number `seq` of `channel`."""

    message_id: str
    channel: str
    seq: int


def entry_row_id(channel: str, seq: int) -> bytes:
    return ENTRY_ROW_PREFIX + channel.encode() + b"/%016x" % seq


def marker_row_id(channel: str) -> bytes:
    return MARKER_ROW_PREFIX + channel.encode()


def encode_entry(entry: InboxEntry) -> bytes:
    return encode_json({"message_id": entry.message_id, "channel": entry.channel,
                        "seq": entry.seq})


def decode_entry(value: bytes) -> InboxEntry:
    record = decode_json(value)
    return InboxEntry(record["message_id"], record["channel"], record["seq"])


def encode_seq(seq: int) -> bytes:
    return b"%d" % seq


def decode_seq(value: bytes) -> int:
    return int(value.decode("ascii"))


# -- JSON records --------------------------------------------------------------------


def encode_json(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


def decode_json(value: bytes) -> dict:
    record = json.loads(value)
    assert isinstance(record, dict), f"chat record is not a JSON object: {value[:80]!r}"
    return record
