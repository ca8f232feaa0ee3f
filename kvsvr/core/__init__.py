"""What one node does with its data, with no IO of its own (sans-IO).

    model.py     the two data models: Key-Value and Key-Table, their
                 mutations, conditions, and how a mutation applies
    keyspace.py  the models over storage: key states, rows, change indexes
    records.py   every stored record with its checksum and encoding
    requests.py  client requests, parsed and checked from the wire
    engine.py    the single-node engine: requests in, writes and answers out
"""
