"""KVSvr's storage node: data models, storage, wire protocol, server and client.

Layering: this package knows nothing of `cluster`, `chat_service`, `cli` or
`jepsen_tests`. Its sans-IO core (model, keyspace, engine, requests,
records, wire, replication.replica) never touches a socket, a clock or an
unseeded random; `server` and `client` are the trio shells around it.
docs/architecture.md draws the picture; docs/protocol.md is the wire protocol.
"""
