"""The trio shells: the only code in kvsvr that owns sockets, clocks and threads.

    server.py        a frame server and the single-node `Node` around the engine
    replica_node.py  `ReplicaNode`: a replica on real sockets, its peer links,
                     the committer that syncs before anything leaves
    outgoing.py      the one send loop: bytes added without awaiting, sent as one
    tls.py           TLS contexts for clients and peers
    secret_file.py   the group's peer secret, read and written safely

Each shell drives a sans-IO core (core.engine, replication.replica) and
carries out its effects in the order the core states: writes, one sync,
then messages and replies.
"""
