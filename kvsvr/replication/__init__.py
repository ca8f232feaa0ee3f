"""Replica groups: per-key consensus on versions, payloads through the replication log.

Sans-IO only: `messages` holds every message and log record, `replica` the
core that steps on them, and its parts each open with their theory. The
trio shell that runs a replica on real sockets is kvsvr/shell/replica_node.py.
docs/replication.md explains the protocol; docs/protocol-rules.md states
its rules and invariants.
"""
