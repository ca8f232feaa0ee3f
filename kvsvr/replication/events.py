"""What a replica tells its observer: one small type per event.

Theory. A replica reports the moments a checker needs to see, and nothing
else acts on them: the node shell passes no observer (core.ignore_event),
the simulator's oracle checks invariants on them and places crashes at
them (jepsen_tests/simulator/oracle.py, simulation.py), and the rule tests
assert on them. Each event is a frozen dataclass, matched by type; an
event that costs work to build (`Applied`'s state digest) is built only
when someone observes.
"""

from __future__ import annotations

import dataclasses

from kvsvr.replication.messages import Accept, Ballot, Instance, Ref


@dataclasses.dataclass(frozen=True, slots=True)
class Promised:
    """An acceptor granted a Prepare (its Promise leaves after the step's sync)."""

    node_id: int
    key: bytes
    ballot: Ballot


@dataclasses.dataclass(frozen=True, slots=True)
class Voted:
    """An acceptor accepted `instance` at `ballot`."""

    node_id: int
    key: bytes
    ballot: Ballot
    instance: Instance


@dataclasses.dataclass(frozen=True, slots=True)
class AcceptSent:
    """A proposer sent an Accept (its value is frozen from now on: R8)."""

    node_id: int
    accept: Accept


@dataclasses.dataclass(frozen=True, slots=True)
class Won:
    """A proposer counted a majority of votes for its Accept: a decision."""

    node_id: int
    key: bytes
    ballot: Ballot
    instance: Instance


@dataclasses.dataclass(frozen=True, slots=True)
class Decided:
    """A replica learned that `instance` of `key` is decided."""

    node_id: int
    key: bytes
    instance: Instance


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    """A replica's state of `key` reached `version`; `digest` hashes that state."""

    node_id: int
    key: bytes
    version: int
    digest: int


@dataclasses.dataclass(frozen=True, slots=True)
class PayloadSeen:
    """A payload made by a proposer or stored from a peer."""

    ref: Ref
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class CorruptPayload:
    """A payload from a peer whose bytes do not match its ref's checksum (dropped)."""

    node_id: int
    ref: Ref


@dataclasses.dataclass(frozen=True, slots=True)
class Parked:
    """An Accept waits for its payload (R4)."""

    node_id: int
    key: bytes
    instance: Instance


@dataclasses.dataclass(frozen=True, slots=True)
class StateInstalled:
    """A state transfer installed `key` at `version` (R12)."""

    node_id: int
    key: bytes
    version: int


@dataclasses.dataclass(frozen=True, slots=True)
class WalkStarted:
    """A replica began walking `origin`'s keys after its log was trimmed past us."""

    node_id: int
    origin: int


@dataclasses.dataclass(frozen=True, slots=True)
class LogTrimmed:
    node_id: int
    through: tuple[int, int]


@dataclasses.dataclass(frozen=True, slots=True)
class Reproposed:
    """A proposer sent its own waiting instance again under a new ballot."""

    node_id: int
    key: bytes
    instance: Instance


Event = (
    Promised | Voted | AcceptSent | Won | Decided | Applied | PayloadSeen | CorruptPayload
    | Parked | StateInstalled | WalkStarted | LogTrimmed | Reproposed
)
