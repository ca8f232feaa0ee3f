"""KVSvr's storage node: data models, storage, wire protocol, replication, server and client.

The folders are the layers, each depending only on those listed before it:

    protocol/     what crosses a wire: errors, limits, frames, addresses,
                  the peer hello's proofs (sans-IO)
    storage/      the storage interface, in memory and on RocksDB
    core/         the data models, the keyspace over storage, records with
                  checksums, requests, the single-node engine (sans-IO)
    replication/  the replica: per-key Paxos on versions, as parts driven
                  by messages and ticks (sans-IO)
    shell/        the trio shells: the client server, the replica node and
                  its peer links, TLS, secret files
    client.py     the client library (trio, and a blocking wrapper)

This package knows nothing of `cluster`, `chat_service`, `cli` or
`jepsen_tests`. tests/test_style.py checks both rules: no sans-IO module
imports trio, a socket, a clock, threads, rocksdict or unseeded randomness,
and no layer imports one above it. docs/architecture.md draws the picture.
"""
