"""The delivery checker, on hand-made histories: it passes a correct one and
catches each kind of fault planted in it (so its passing means something)."""

from __future__ import annotations

from chat_service.delivery_check import Delivered, SentMessage, check_deliveries

GROUP = "g:team"
MEMBERS = frozenset({"ann", "bo", "cy"})


def sent(*ids: str, channel: str = GROUP, recipients=MEMBERS) -> list[SentMessage]:
    return [SentMessage(message_id, channel, frozenset(recipients)) for message_id in ids]


def inbox(*ids: str, channel: str = GROUP) -> list[Delivered]:
    return [Delivered(message_id, channel) for message_id in ids]


def test_a_correct_history_passes():
    """Every member has every message once, in the same order."""
    report = check_deliveries(sent("m1", "m2", "m3"),
                              {user: inbox("m1", "m2", "m3") for user in MEMBERS})
    assert report.ok, report.describe()
    assert (report.expected_deliveries, report.delivered) == (9, 9)


def test_a_missing_delivery_is_caught():
    inboxes = {user: inbox("m1", "m2") for user in MEMBERS}
    inboxes["bo"] = inbox("m1")
    report = check_deliveries(sent("m1", "m2"), inboxes)
    assert report.missing == [("bo", "m2")]
    assert not report.ok


def test_a_duplicate_is_caught():
    """The fault a blind retry of a timed-out append makes."""
    inboxes = {user: inbox("m1", "m2") for user in MEMBERS}
    inboxes["cy"] = inbox("m1", "m2", "m2")
    report = check_deliveries(sent("m1", "m2"), inboxes)
    assert report.duplicates == [("cy", "m2", 2)]
    assert report.duplicate_count == 1


def test_two_members_seeing_a_group_in_different_orders_is_caught():
    inboxes = {"ann": inbox("m1", "m2", "m3"), "bo": inbox("m1", "m3", "m2"),
               "cy": inbox("m1", "m2", "m3")}
    report = check_deliveries(sent("m1", "m2", "m3"), inboxes)
    assert len(report.order_violations) == 1
    assert "m2" in report.order_violations[0] and "m3" in report.order_violations[0]


def test_an_order_contradiction_spread_over_three_inboxes_is_caught():
    """No two inboxes disagree on a pair directly, yet no single order fits all three."""
    inboxes = {"ann": inbox("a", "b"), "bo": inbox("b", "c"), "cy": inbox("c", "a")}
    acknowledged = [SentMessage("a", GROUP, frozenset({"ann", "cy"})),
                    SentMessage("b", GROUP, frozenset({"ann", "bo"})),
                    SentMessage("c", GROUP, frozenset({"bo", "cy"}))]
    assert len(check_deliveries(acknowledged, inboxes).order_violations) == 1


def test_channels_may_interleave_differently():
    """The order promised is per channel: two groups' messages may interleave
    differently in different inboxes."""
    other = frozenset({"ann", "bo"})
    acknowledged = sent("g1", "g2") + sent("h1", "h2", channel="g:other", recipients=other)
    ann = [Delivered("g1", GROUP), Delivered("h1", "g:other"), Delivered("g2", GROUP),
           Delivered("h2", "g:other")]
    bo = inbox("h1", "h2", channel="g:other") + inbox("g1", "g2")
    inboxes = {"ann": ann, "bo": bo, "cy": inbox("g1", "g2")}
    assert check_deliveries(acknowledged, inboxes).ok


def test_an_attempted_message_may_be_missing_everywhere_but_not_somewhere():
    acknowledged = sent("m1")
    attempted = sent("maybe")
    nowhere = {user: inbox("m1") for user in MEMBERS}
    assert check_deliveries(acknowledged, nowhere, attempted=attempted).ok
    everywhere = {user: inbox("m1", "maybe") for user in MEMBERS}
    assert check_deliveries(acknowledged, everywhere, attempted=attempted).ok
    somewhere = dict(nowhere, ann=inbox("m1", "maybe"))
    assert check_deliveries(acknowledged, somewhere, attempted=attempted).partial == ["maybe"]


def test_a_message_never_sent_or_in_a_stranger_inbox_is_unexpected():
    inboxes = {user: inbox("m1") for user in MEMBERS}
    inboxes["ann"] = inbox("m1", "ghost")
    inboxes["dee"] = inbox("m1")
    report = check_deliveries(sent("m1"), inboxes)
    assert sorted(report.unexpected) == [("ann", "ghost"), ("dee", "m1")]
