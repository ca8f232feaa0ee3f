"""Pure rules: presence coalescing and expiry, and the key layout's identifiers."""

from __future__ import annotations

import pytest

from chat_service import keys
from chat_service.presence import PresenceRecord, PresenceRule, changed_after, next_record

RULE = PresenceRule(heartbeat_seconds=10, expiry_heartbeats=3, refresh_below_heartbeats=2)


def test_going_online_is_written_with_an_expiry_of_three_heartbeats():
    record = next_record(None, "online", 100.0, RULE)
    assert record == PresenceRecord("online", 100.0, 130.0)


def test_heartbeats_are_coalesced_until_the_expiry_runs_low():
    """A steady online user costs one write per two heartbeats, not one per heartbeat."""
    stored = PresenceRecord("online", 100.0, 130.0)
    assert next_record(stored, "online", 110.0, RULE) is None  # 20 s left: enough
    refreshed = next_record(stored, "online", 111.0, RULE)  # 19 s left: extend
    assert refreshed == PresenceRecord("online", 100.0, 141.0)
    writes, record = 0, PresenceRecord("online", 0.0, 30.0)
    for beat in range(1, 61):
        new = next_record(record, "online", beat * 10.0, RULE)
        if new is not None:
            writes, record = writes + 1, new
    assert writes == 30


def test_an_expired_online_record_reads_as_offline_since_its_expiry():
    record = PresenceRecord("online", 100.0, 130.0)
    assert record.online_at(129.0) and not record.online_at(130.0)
    assert record.changed_at_as_of(200.0) == 130.0
    assert changed_after(record, 120.0, 200.0) and not changed_after(record, 135.0, 200.0)


def test_offline_is_written_once_and_only_for_someone_online():
    online = PresenceRecord("online", 100.0, 130.0)
    assert next_record(online, "offline", 105.0, RULE) == PresenceRecord("offline", 105.0, 105.0)
    assert next_record(PresenceRecord("offline", 105.0, 105.0), "offline", 110.0, RULE) is None
    assert next_record(online, "offline", 140.0, RULE) is None  # already expired
    assert next_record(None, "offline", 1.0, RULE) is None


def test_coming_back_after_expiry_is_a_new_change():
    expired = PresenceRecord("online", 100.0, 130.0)
    assert next_record(expired, "online", 200.0, RULE) == PresenceRecord("online", 200.0, 230.0)


def test_a_direct_channel_is_the_same_from_both_sides():
    assert keys.direct_channel("bo", "ann") == keys.direct_channel("ann", "bo") == "d:ann:bo"
    assert keys.parse_channel("d:ann:bo").users == ("ann", "bo")
    assert keys.parse_channel("d:ann:ann").users == ("ann",)
    assert keys.parse_channel("g:team").group == "team"


@pytest.mark.parametrize("bad", ["", "a/b", "a:b", "x" * 65, "é", "a b"])
def test_identifiers_that_would_break_the_key_layout_are_refused(bad):
    with pytest.raises(keys.BadIdentifier):
        keys.check_identifier(bad)


def test_fanout_keys_split_back_into_channel_and_part():
    for channel in ("g:team", "d:ann:bo"):
        for part in ("cursor", "lease", "log"):
            assert keys.split_fanout_key(keys.fanout_key(channel, part)) == (channel, part)
    assert keys.split_fanout_key(b"chat/inbox/ann") is None


def test_entry_rows_of_one_channel_sort_by_seq():
    rows = [keys.entry_row_id("g:team", seq) for seq in (1, 2, 10, 255, 4096)]
    assert rows == sorted(rows)
