"""The delivery checker: every acknowledged message in every recipient's inbox
exactly once, and one order per channel.

Theory of operation. The input is what a test or workload knows from the
outside, nothing of the service's internals:

- `acknowledged`: the sends answered 2xx, each with its channel and the
  set of users who must receive it;
- `attempted`: sends whose outcome is unknown (an error, a timeout, a
  crash): each may be delivered or not, but never twice, and never to only
  some of its recipients once delivery has settled;
- `inboxes`: for each user, the entries of its inbox in inbox order
  (message id and channel), as a sync or a read of the store saw them.

The rules checked:

1. *exactly once*: an acknowledged message appears exactly once in each of
   its recipients' inboxes (0: missing, more: duplicate);
2. *at most once*: an attempted message appears at most once per inbox;
3. *all or nothing*: an attempted message in one recipient's inbox is in
   all of them (`partial`);
4. *nothing else*: no inbox holds a message that was never sent, or one
   sent to a channel it is not a recipient of (`unexpected`);
5. *one order per channel*: the inboxes' sequences of one channel's
   messages are all subsequences of a single order. Consecutive entries of
   each inbox give "a before b" edges; the orders agree exactly when that
   graph has no cycle (Kahn's algorithm). A violation names the channel
   and the messages caught in a cycle.

Standard library only, and pure: jepsen_tests imports it for its `chat`
workload, chat-bench for its final count, tests/chat for the fault tests.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping, Sequence


@dataclasses.dataclass(frozen=True, slots=True)
class SentMessage:
    message_id: str
    channel: str
    recipients: frozenset[str]


@dataclasses.dataclass(frozen=True, slots=True)
class Delivered:
    message_id: str
    channel: str


@dataclasses.dataclass
class DeliveryReport:
    acknowledged: int = 0
    expected_deliveries: int = 0
    delivered: int = 0  # acknowledged deliveries found exactly once
    missing: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (user, message)
    duplicates: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)
    partial: list[str] = dataclasses.field(default_factory=list)  # attempted, some recipients
    unexpected: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    order_violations: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.partial or self.unexpected
                    or self.order_violations)

    @property
    def duplicate_count(self) -> int:
        """Extra copies, summed: a message twice in one inbox counts 1."""
        return sum(count - 1 for _, _, count in self.duplicates)

    def summary(self) -> dict:
        return {
            "ok": self.ok,
            "acknowledged": self.acknowledged,
            "expected_deliveries": self.expected_deliveries,
            "delivered": self.delivered,
            "missing": len(self.missing),
            "duplicates": self.duplicate_count,
            "partial": len(self.partial),
            "unexpected": len(self.unexpected),
            "order_violations": len(self.order_violations),
        }

    def describe(self, examples: int = 5) -> str:
        lines = [", ".join(f"{name}={value}" for name, value in self.summary().items())]
        for name in ("missing", "duplicates", "partial", "unexpected", "order_violations"):
            found = getattr(self, name)
            if found:
                lines.append(f"{name}: {found[:examples]}{' ...' if len(found) > examples else ''}")
        return "\n".join(lines)


def check_deliveries(
    acknowledged: Iterable[SentMessage],
    inboxes: Mapping[str, Sequence[Delivered]],
    *,
    attempted: Iterable[SentMessage] = (),
) -> DeliveryReport:
    report = DeliveryReport()
    acknowledged = list(acknowledged)
    sent = {message.message_id: message for message in attempted}
    sent.update((message.message_id, message) for message in acknowledged)
    acknowledged_ids = {message.message_id for message in acknowledged}

    counts: dict[tuple[str, str], int] = collections.Counter()
    for user, entries in inboxes.items():
        for entry in entries:
            message = sent.get(entry.message_id)
            if (message is None or message.channel != entry.channel
                    or user not in message.recipients):
                report.unexpected.append((user, entry.message_id))
                continue
            counts[(user, entry.message_id)] += 1

    for (user, message_id), count in sorted(counts.items()):
        if count > 1:
            report.duplicates.append((user, message_id, count))

    report.acknowledged = len(acknowledged)
    for message in acknowledged:
        for user in sorted(message.recipients):
            report.expected_deliveries += 1
            if counts.get((user, message.message_id), 0) == 0:
                report.missing.append((user, message.message_id))
            elif counts[(user, message.message_id)] == 1:
                report.delivered += 1
    for message_id, message in sorted(sent.items()):
        if message_id in acknowledged_ids:
            continue
        found = [user for user in message.recipients if counts.get((user, message_id), 0)]
        if found and len(found) != len(message.recipients):
            report.partial.append(message_id)

    report.order_violations = _order_violations(inboxes, sent)
    return report


def _order_violations(
    inboxes: Mapping[str, Sequence[Delivered]], sent: Mapping[str, SentMessage]
) -> list[str]:
    sequences: dict[str, list[list[str]]] = collections.defaultdict(list)
    for entries in inboxes.values():
        per_channel: dict[str, list[str]] = collections.defaultdict(list)
        seen: set[str] = set()
        for entry in entries:
            if entry.message_id in sent and entry.message_id not in seen:
                seen.add(entry.message_id)
                per_channel[entry.channel].append(entry.message_id)
        for channel, sequence in per_channel.items():
            sequences[channel].append(sequence)
    violations = []
    for channel, channel_sequences in sorted(sequences.items()):
        cycle = _cycle_members(channel_sequences)
        if cycle:
            violations.append(f"{channel}: no single order; caught in a cycle: {cycle[:6]}")
    return violations


def _cycle_members(sequences: list[list[str]]) -> list[str]:
    """The messages left after Kahn's algorithm on the 'a before b' edges: empty
    exactly when one order agrees with every sequence."""
    successors: dict[str, set[str]] = collections.defaultdict(set)
    indegree: dict[str, int] = collections.Counter()
    nodes: set[str] = set()
    for sequence in sequences:
        nodes.update(sequence)
        for before, after in zip(sequence, sequence[1:], strict=False):
            if after not in successors[before]:
                successors[before].add(after)
                indegree[after] += 1
    ready = collections.deque(node for node in nodes if indegree[node] == 0)
    placed = 0
    while ready:
        node = ready.popleft()
        placed += 1
        for after in successors[node]:
            indegree[after] -= 1
            if indegree[after] == 0:
                ready.append(after)
    if placed == len(nodes):
        return []
    return sorted(node for node in nodes if indegree[node] > 0)
