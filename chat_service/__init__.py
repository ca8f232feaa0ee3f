"""A chat service on KVSvr: write fan-out inboxes and the sync protocol.

Modules, from the bottom up: keys (the layout in the store), store (reads,
retries, write-once), fanout (exactly-once delivery into inboxes), notify
(push across instances), presence, service (the operations), api (HTTP),
__main__ (`chat-service serve`), bench (`chat-bench`), delivery_check (the
checker, standard library only) and inbox_reader, processes (instances as
subprocesses, for tests). docs/chat.md explains the design.
"""
