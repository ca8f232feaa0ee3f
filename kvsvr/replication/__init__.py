"""Replica groups: per-key consensus on versions, payloads through the replication log.

`messages` holds every message and log record; `replica` the sans-IO core
that steps on them. The trio shell that runs a replica on real sockets sits
beside them in `node`. docs/replication.md explains the protocol.
"""
