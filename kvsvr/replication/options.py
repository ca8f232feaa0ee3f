"""The replica's knobs: timeouts counted in ticks, and bounds.

Time is an input (STYLE.md §3): the shell decides how long a tick is and
calls `Replica.tick()` that often; every timeout below is a number of
those ticks. Every bound has a name and a reason (STYLE.md §9).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ReplicaOptions:
    """Timeouts in ticks, and bounds. The shell decides how long a tick is."""

    # Resend a round's message to members that have not answered after this long.
    round_timeout_ticks: int = 8
    # Resends of one Prepare or Accept round before it is given up.
    round_attempts_max: int = 4
    # After a lost round: wait a random 1..base * 2**failures ticks, capped (R6).
    backoff_base_ticks: int = 2
    backoff_max_ticks: int = 64
    # A client request unanswered this long is answered `timeout` (unknown outcome).
    client_timeout_ticks: int = 400
    # Quorum reads retried while an instance above the decided one is open,
    # before the reader runs a recovery round itself.
    read_retries_before_recovery: int = 3
    # Log records streamed to a peer beyond its ack, and per message; a
    # message is also bounded in bytes, so it always fits a frame (a record
    # larger than the byte bound goes alone: a payload is at most one frame's
    # worth, `payload_size_max_bytes`).
    stream_window_records: int = 512
    stream_batch_records_max: int = 64
    stream_batch_max_bytes: int = 1024 * 1024
    # A receiver re-acks each origin this often (how a restarted origin learns
    # where to resume); an origin resends from the ack if nothing moved this long.
    stream_ack_interval_ticks: int = 16
    # Records are acked in bulk: at once when this many arrived unacked from
    # one origin, otherwise at the receiver's next tick (an ack vouches for
    # nothing a client waits on; it moves the origin's window and trimming).
    stream_ack_records_max: int = 128
    # Send log records at the end of every step (True), or only when the
    # shell calls `Replica.pump_streams()` (False): the node shell pumps
    # once after each burst of steps, so one StreamRecords carries every
    # record the burst appended instead of one message per step.
    stream_pump_each_step: bool = True
    # Recently appended log records kept in memory, so streaming them needs
    # no read of the log; older records are read back from storage.
    log_tail_cached_records_max: int = 4096
    stream_retransmit_ticks: int = 24
    # Fetches of a missing payload or state are retried this often.
    fetch_retry_ticks: int = 12
    # A payload first needed (an Accept or a decision overtook its record on
    # the stream) is asked for only after this long: the stream almost
    # always brings it first, and then the payload crosses the network once.
    payload_fetch_grace_ticks: int = 2
    # Log trimming (R11). An origin trims below every peer's acknowledged
    # position; beyond this many records it trims anyway, and a peer left
    # below the trim point catches up by state transfer (it is told so).
    log_retained_records_max: int = 100_000
    # Records deleted per tick, so one tick's work stays small.
    log_trim_batch_records_max: int = 1024
    # A received payload nothing pins (no accepted vote, no pending decision
    # here) is kept at least this long, so the Accept or decision that
    # follows its stream record finds it, then collected.
    payload_keep_ticks: int = 2000
    # Payloads looked at per tick by that collection.
    payload_collect_batch_max: int = 1024
    # State transfer: rows per StateReply page, and the bytes of row values
    # per page (one row always fits: a value is at most one frame).
    state_transfer_page_rows_max: int = 1000
    state_transfer_page_max_bytes: int = 1024 * 1024
    # A walk of an origin's decided keys (after its log was trimmed past us):
    # keys per DecisionsReply, and keys catching up at once before the walk
    # asks for its next page (each may need a state transfer).
    walk_page_keys_max: int = 256
    catch_up_keys_max: int = 64
    # Accepts parked for their payload (R4), across all refs; past it the
    # oldest ref's are dropped unanswered (their proposers resend).
    parked_accepts_max: int = 4096
    # Mutations merged into one instance, and the payload bytes they may total.
    batch_mutations_max: int = 128
    batch_payload_max_bytes: int = 1024 * 1024
    # Planted bugs: each breaks one rule with a realistic mistake, for the
    # tests that show the simulator alone finds the violation
    # (docs/replication.md, "Planted bugs"). Never set outside those tests.
    bug_incarnation_not_raised: bool = False  # R1: a restart reuses its incarnation
    bug_promise_inferred_after_restart: bool = False  # R2: own ballot taken from the acceptor
    bug_delete_forgets_version: bool = False  # R3: a delete drops the key's record
    bug_parked_accept_not_rechecked: bool = False  # R4: a parked Accept skips the promise check
    bug_accepted_counted_by_ballot: bool = False  # R5: replies matched on the ballot only
    bug_no_backoff: bool = False  # R6: a lost round is retried at once
    bug_condition_failed_unconfirmed: bool = False  # R7: no quorum read before condition_failed
    bug_round_given_up_keeps_promise: bool = False  # R8: a new ref under a round's ballot
    bug_rejected_writes_requeued: bool = False  # R9: proposed again before a decision
    bug_read_not_waiting_apply: bool = False  # R10: a read served below its target version
    bug_vote_payload_unpinned: bool = False  # R11: a voted-for payload may be collected
    bug_state_transfer_resets_acceptor: bool = False  # R12: installing drops promise and vote
    bug_apply_past_a_gap: bool = False  # invariant 4: a later instance applied over a gap
    bug_promise_not_synced: bool = False  # a Promise leaves before its promise is synced
    bug_skip_promise_check: bool = False  # an Accept below the promise is accepted
    bug_reply_before_sync: bool = False  # no reply waits for its sync
    bug_vote_sent_early: bool = False  # an Accepted counts as a message that may leave early
    bug_vote_lazily_durable: bool = False  # a vote written as lazily durable as a decision
    bug_read_without_quorum: bool = False  # reads answered from the local store


# What a peer message holds besides its payload bytes, key and row values:
# class tags, ballots, refs, instances, positions (a few hundred bytes at
# most), with room to spare.
MESSAGE_OVERHEAD_BYTES = 4096


def payload_size_max_bytes(limits) -> int:
    """The largest payload a replica proposes: one that fits a frame as a
    stream record, a PayloadReply or a Promise, with its key. A client write
    whose mutation alone is larger is answered `too_large`."""
    return limits.frame_size_max_bytes - limits.key_size_max_bytes - MESSAGE_OVERHEAD_BYTES


def check_consistent(options: ReplicaOptions, limits) -> None:
    """Refuse limits that contradict each other (STYLE.md §9): every peer
    message a replica builds must fit the frame its peers accept."""
    frame = limits.frame_size_max_bytes
    payload_max = payload_size_max_bytes(limits)
    needs = {
        "a client's largest value as a payload": limits.value_size_max_bytes
        + limits.key_size_max_bytes + MESSAGE_OVERHEAD_BYTES,
        "batch_payload_max_bytes": options.batch_payload_max_bytes,
        "stream_batch_max_bytes": options.stream_batch_max_bytes,
        "a state transfer page and its key's value": options.state_transfer_page_max_bytes
        + limits.value_size_max_bytes,
    }
    if not 1 <= options.stream_ack_records_max <= options.stream_window_records // 2:
        raise ValueError(
            f"stream_ack_records_max ({options.stream_ack_records_max}) must be between 1 and "
            f"half of stream_window_records ({options.stream_window_records}), or an origin's "
            f"window fills before its peer acks"
        )
    for what, size in needs.items():
        if size > payload_max:
            raise ValueError(
                f"{what} ({size} bytes) does not fit a peer frame: frame_size_max_bytes "
                f"{frame} leaves {payload_max} bytes after a key and message overhead"
            )


DEFAULT_OPTIONS = ReplicaOptions()
