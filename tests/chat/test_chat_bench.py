"""chat-bench itself: a short run against real processes reports a clean
delivery check and figures whose counts add up; its count of missing and
duplicate deliveries catches both when they are planted.

These show the bench measures what it says, not how fast anything is
(docs/chat.md has the figures).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

from chat_service.bench import Receiver, summarize
from chat_service.delivery_check import Delivered, SentMessage

USERS, GROUPS, GROUP_SIZE, MESSAGES = 30, 3, 8, 40
RUN_TIMEOUT_SECONDS = 180


def run_chat_bench(urls: list[str], *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    command = [sys.executable, "-m", "chat_service.bench", "--chat", ",".join(urls),
               "--users", str(USERS), "--groups", str(GROUPS), "--group-size", str(GROUP_SIZE),
               "--messages", str(MESSAGES), "--drain-seconds", "60", *options]
    finished = subprocess.run(command, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_SECONDS)
    lines = finished.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{finished.stderr}"
    return finished, json.loads(lines[-1])


def test_chat_bench_is_a_console_script():
    (entry,) = [entry for entry in importlib.metadata.entry_points(group="console_scripts")
                if entry.name == "chat-bench"]
    assert entry.value == "chat_service.bench:main"


@pytest.mark.parametrize("pace", [(), ("--rate", "40")], ids=["full-speed", "open-loop"])
def test_a_short_run_delivers_everything_once_and_its_counts_add_up(chat_cluster, pace):
    """Through both instances: every acknowledged message reaches each of its
    group's members exactly once (final sync of every user), and the figures
    are consistent with one another."""
    finished, figures = run_chat_bench(chat_cluster.urls, *pace)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert figures["missing"] == 0 and figures["duplicates"] == 0, figures
    assert figures["order_violations"] == 0 and figures["unexpected"] == 0, figures
    assert figures["final_sync_incomplete"] == 0, figures
    assert figures["sent"] + figures["unknown_sends"] == MESSAGES, figures
    assert figures["expected_deliveries"] == figures["sent"] * GROUP_SIZE, figures
    assert figures["delivered"] == figures["expected_deliveries"], figures
    assert figures["deliveries_per_s"] > 0 and figures["msgs_per_s"] > 0, figures
    assert 0 <= figures["p50_ms"] <= figures["p99_ms"], figures
    assert figures["instances"] == 2 and figures["rate"] == (40.0 if pace else None)


def test_the_bench_counts_a_planted_missing_and_a_planted_duplicate_delivery():
    """Its final count can fail: one member never got m2, another got m1 twice."""
    members = ("ann", "bo", "cy")
    sent = [SentMessage(message_id, "g:team", frozenset(members)) for message_id in ("m1", "m2")]
    receivers = [Receiver(user, index) for index, user in enumerate(members)]
    for receiver in receivers:
        for message_id in ("m1", "m2"):
            receiver.received.append(Delivered(message_id, "g:team"))
            receiver.first_seen[message_id] = 1.5
    receivers[1].received.pop()  # bo: m2 missing
    del receivers[1].first_seen["m2"]
    receivers[2].received.append(Delivered("m1", "g:team"))  # cy: m1 twice
    figures = summarize(sent, [], receivers, {"m1": 1.0, "m2": 1.0}, [0.01, 0.01],
                        first_send=0.0, send_seconds=1.0, say=lambda text: None)
    assert (figures["missing"], figures["duplicates"]) == (1, 1)
    assert figures["expected_deliveries"] == 6 and figures["delivered"] == 4
    assert figures["p50_ms"] == 500.0
