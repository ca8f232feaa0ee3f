"""What crosses a wire between a client, a node and its peers (sans-IO).

    errors.py     every error a node answers, with its wire code
    limits.py     the named bounds on keys, values, frames and batches
    wire.py       frames: a length, a crc32c and a CBOR body
    addresses.py  HOST:PORT, parsed and formatted in one place
    peer_auth.py  the peer hello: HMAC-SHA256 proofs over a transcript
"""

from kvsvr.protocol.errors import KvError
from kvsvr.protocol.limits import DEFAULT_LIMITS, Limits

__all__ = ["DEFAULT_LIMITS", "KvError", "Limits"]
