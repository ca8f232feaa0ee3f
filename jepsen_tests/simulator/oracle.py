"""What the simulator checks while a run goes on: the protocol's invariants.

Theory of operation. The replicas report what they do through their
observer (the typed events of kvsvr/replication/events.py), and the
simulator shows the oracle every vote that leaves a node. The oracle keeps, over the whole
run, what must never be contradicted later, and raises `InvariantViolation`
the moment it is:

- **one ref per (key, version, ballot)** in any Accept sent or accepted (R8);
- **one payload per ref**: equal bytes for a ref wherever it is seen (R1);
- **one decision per (key, version)**, wherever a replica learns it;
- **equal states**: the digest of a key's applied state at a version is
  the same on every replica (invariant 4: apply in order, no gap);
- **chosen by votes**: an instance is chosen once a majority of acceptors
  sent an `Accepted` for the same (ballot, instance). Accepted messages
  leave only after the vote behind them is synced, so each one is a
  durable vote; they are accumulated over the whole run, never taken from
  a snapshot of the current votes (a value chosen and later overwritten
  by a higher ballot still counts). At most one instance may be chosen at
  a version, chosen instances of a key may not overlap, and every decision
  a replica learns must be the one the votes chose, where they chose one;
- **won with a majority**: a coordinator that declares its Accept round
  won must hold a majority of those votes for exactly that (ballot,
  instance) (R5);
- **an acceptor forgets nothing it revealed**: once a node has sent a
  granted Promise or an Accepted vote for a key, every later message of
  that node about the key (and its durable record after a restart) shows
  a promise at least that high, and a vote at least as high as the last
  one it sent, unless the node has learned that version decided. A promise
  lost in a crash because it was not synced before its Promise left, or a
  state transfer that resets the acceptor, shows here at once, before it
  has had the chance to let two values be chosen.

A message a correct replica sent that its peer refuses as bad input
(PeerInputError) is a violation too; the simulator reports it.
"""

from __future__ import annotations

import collections

from kvsvr.replication import events
from kvsvr.replication.messages import Accepted, Promise, ReadReply, Vote


class InvariantViolation(AssertionError):
    """A protocol invariant broke; the message names it and the seed replays it."""


class Oracle:
    def __init__(self, members: int):
        self.majority = members // 2 + 1
        self._accept_refs: dict[tuple, tuple] = {}
        self._payload_bytes: dict[tuple, bytes] = {}
        self._decisions: dict[tuple, object] = {}
        self._digests: dict[tuple, int] = {}
        # (key, ballot, instance) -> the nodes whose synced vote it has.
        self._votes: dict[tuple, set[int]] = collections.defaultdict(set)
        # key -> {first_version: instance} chosen by a majority of votes.
        self._chosen: dict[bytes, dict[int, object]] = collections.defaultdict(dict)
        # (node, key) -> the highest ballot it promised or voted at, in a message
        # that left, and the last vote it sent.
        self._revealed_promise: dict[tuple, tuple] = {}
        self._revealed_vote: dict[tuple, object] = {}
        self.counters: collections.Counter = collections.Counter()

    # -- what leaves a node --------------------------------------------------------

    def message_sent(self, node_id: int, message) -> None:
        if isinstance(message, Promise):
            self._check_memory(node_id, message.key, message.promised, "a Promise")
            self._check_vote_kept(node_id, message.key, message.accepted, message.chosen)
            if message.granted:
                self._reveal_promise(node_id, message.key, message.ballot)
        elif isinstance(message, Accepted):
            self._check_memory(node_id, message.key, message.promised, "an Accepted")
            if message.outcome == "accepted":
                self._reveal_promise(node_id, message.key, message.ballot)
                self._revealed_vote[(node_id, message.key)] = Vote(message.ballot, message.instance)
                self._vote_sent(node_id, message.key, message.ballot, message.instance)
        elif isinstance(message, ReadReply):
            self._check_vote_kept(node_id, message.key, message.accepted, message.chosen)

    def restarted(self, node_id: int, consensus_of) -> None:
        """After a restart: the durable record holds all the node revealed."""
        for node, key in list(self._revealed_promise):
            if node == node_id:
                consensus = consensus_of(key)
                self._check_memory(node_id, key, consensus.promised, "its record after a restart")
                self._check_vote_kept(node_id, key, consensus.accepted, consensus.chosen)

    def _reveal_promise(self, node_id: int, key: bytes, ballot) -> None:
        name = (node_id, key)
        self._revealed_promise[name] = max(ballot, self._revealed_promise.get(name, ballot))

    def _check_memory(self, node_id: int, key: bytes, promised, where: str) -> None:
        revealed = self._revealed_promise.get((node_id, key))
        if revealed is not None and promised < revealed:
            raise InvariantViolation(
                f"n{node_id} promised {revealed} for {key!r}, but {where} shows a promise of "
                f"{promised}: a promise it revealed was forgotten"
            )

    def _check_vote_kept(self, node_id: int, key: bytes, vote, chosen) -> None:
        revealed = self._revealed_vote.get((node_id, key))
        if revealed is None:
            return
        if chosen is not None and chosen.last_version >= revealed.instance.first_version:
            return  # that version is decided here: the vote has done its work
        if vote is None or vote.ballot < revealed.ballot:
            raise InvariantViolation(
                f"n{node_id} voted for {revealed.instance} of {key!r} at {revealed.ballot}, "
                f"then reported {'no vote' if vote is None else vote} with that version "
                f"undecided there: a vote it revealed was forgotten"
            )

    # -- votes ---------------------------------------------------------------------

    def _vote_sent(self, node_id: int, key: bytes, ballot, instance) -> None:
        voters = self._votes[(key, ballot, instance)]
        voters.add(node_id)
        if len(voters) != self.majority:
            return
        chosen = self._chosen[key]
        previous = chosen.setdefault(instance.first_version, instance)
        if previous != instance:
            raise InvariantViolation(
                f"two instances chosen by a majority of votes for {key!r} "
                f"v{instance.first_version}: {previous} and {instance} (the second at {ballot})"
            )
        for other in chosen.values():
            if other != instance and _overlap(other, instance):
                raise InvariantViolation(
                    f"chosen instances of {key!r} overlap: {other} and {instance}"
                )
        decided = self._decisions.get((key, instance.first_version))
        if decided is not None and decided != instance:
            raise InvariantViolation(
                f"{key!r} v{instance.first_version}: {decided} was decided, but the votes "
                f"chose {instance}"
            )
        self.counters["chosen_by_votes"] += 1

    # -- what the replicas report --------------------------------------------------

    def observe(self, event: events.Event) -> None:
        match event:
            case events.AcceptSent(accept=accept):
                self._check_one_ref(accept.key, accept.ballot, accept.instance)
            case events.Voted(key=key, ballot=ballot, instance=instance):
                self._check_one_ref(key, ballot, instance)
            case events.Won(node_id=node_id, key=key, ballot=ballot, instance=instance):
                voters = self._votes.get((key, ballot, instance), set())
                if len(voters) < self.majority:
                    raise InvariantViolation(
                        f"n{node_id} declared {instance} of {key!r} chosen at {ballot} with the "
                        f"votes of {sorted(voters) or 'no one'} only (R5)"
                    )
            case events.Decided(node_id=node_id, key=key, instance=instance):
                self._check_decision(node_id, key, instance)
            case events.Applied(node_id=node_id, key=key, version=version, digest=digest):
                previous = self._digests.setdefault((key, version), digest)
                if previous != digest:
                    raise InvariantViolation(
                        f"replicas differ on {key!r} at v{version} (n{node_id} disagrees)"
                    )
            case events.PayloadSeen(ref=ref, payload=payload):
                previous = self._payload_bytes.setdefault(ref, payload)
                if previous != payload:
                    raise InvariantViolation(f"ref {ref} names two different payloads")
            case _:
                counted = _COUNTED.get(type(event))
                if counted is not None:
                    self.counters[counted] += 1

    def _check_one_ref(self, key: bytes, ballot, instance) -> None:
        name = (key, ballot, instance.first_version)
        previous = self._accept_refs.setdefault(name, instance.ref)
        if previous != instance.ref:
            raise InvariantViolation(
                f"two refs for {key!r} v{instance.first_version} at ballot "
                f"{ballot}: {previous} and {instance.ref}"
            )

    def _check_decision(self, node_id: int, key: bytes, instance) -> None:
        previous = self._decisions.setdefault((key, instance.first_version), instance)
        if previous != instance:
            raise InvariantViolation(
                f"two decisions for {key!r} v{instance.first_version}: "
                f"{previous} and {instance} (learned at n{node_id})"
            )
        chosen = self._chosen[key].get(instance.first_version)
        if chosen is not None and chosen != instance:
            raise InvariantViolation(
                f"n{node_id} learned {instance} of {key!r}, but the votes chose {chosen}"
            )


_COUNTED = {
    events.Parked: "accepts_before_their_payload",
    events.StateInstalled: "state_transfers",
    events.WalkStarted: "walks_after_trimmed_log",
    events.LogTrimmed: "log_trims",
    events.Reproposed: "batches_proposed_again",
}


def _overlap(one, other) -> bool:
    return one.first_version <= other.last_version and other.first_version <= one.last_version
