"""The error codes a node answers with, and the exceptions clients see.

Two kinds of failure are kept apart (STYLE.md §7). Bad input from outside
(a client, a peer, a file on disk) is checked and answered with one of the
codes below, and nothing stored changes. A broken internal invariant is an
AssertionError that stops the node before it does harm: it never becomes
one of these codes.

The codes are part of the wire protocol (docs/protocol.md):

    not_found         the key (or row) holds no value; carries `version`
    condition_failed  a compare-and-set's expectation did not hold; carries
                      the key's current `version`
    bad_request       malformed frame or request, wrong type, unknown op
    too_large         a key, value, frame or batch over its named limit
    overloaded        a bounded queue is full; retry later (nothing was done)
    unavailable       the node can't serve now (shutting down, no quorum)
    timeout           the outcome is unknown: the operation may or may not
                      have taken effect ("indeterminate", never "failed")
    checksum          a stored record failed its checksum; names the key
    internal          a bug; the request's outcome is unknown
"""

from __future__ import annotations

ERROR_CODES = (
    "not_found",
    "condition_failed",
    "bad_request",
    "too_large",
    "overloaded",
    "unavailable",
    "timeout",
    "checksum",
    "internal",
)

# Codes after which the operation certainly did not take effect. Every other
# failure of a write leaves its outcome unknown.
DEFINITE_FAILURE_CODES = frozenset(
    {"not_found", "condition_failed", "bad_request", "too_large", "overloaded", "unavailable"}
)


class KvError(Exception):
    """An error answered by a node (or raised by the client for a node)."""

    code = "internal"

    def __init__(self, message: str, *, version: int | None = None, key: bytes | None = None):
        super().__init__(message)
        self.message = message
        self.version = version
        self.key = key

    @property
    def indeterminate(self) -> bool:
        """True when a write that failed this way may still have taken effect."""
        return self.code not in DEFINITE_FAILURE_CODES

    def to_wire(self) -> dict:
        body: dict = {"code": self.code, "message": self.message}
        if self.version is not None:
            body["version"] = self.version
        if self.key is not None:
            body["key"] = self.key
        return body


class NotFound(KvError):
    code = "not_found"


class ConditionFailed(KvError):
    code = "condition_failed"


class BadRequest(KvError):
    code = "bad_request"


class TooLarge(KvError):
    code = "too_large"


class Overloaded(KvError):
    code = "overloaded"


class Unavailable(KvError):
    code = "unavailable"


class Timeout(KvError):
    """The deadline passed before an answer: the outcome is unknown."""

    code = "timeout"


class ChecksumError(KvError):
    code = "checksum"


class InternalError(KvError):
    code = "internal"


_ERROR_CLASSES = {cls.code: cls for cls in KvError.__subclasses__()}


def error_from_wire(body: object) -> KvError:
    """Rebuild the exception a node answered; an unknown shape is `internal`."""
    if not isinstance(body, dict):
        return InternalError(f"malformed error body {body!r}")
    code = body.get("code")
    message = body.get("message")
    version = body.get("version")
    key = body.get("key")
    cls = _ERROR_CLASSES.get(code, InternalError) if isinstance(code, str) else InternalError
    return cls(
        message if isinstance(message, str) else str(code),
        version=version if isinstance(version, int) else None,
        key=key if isinstance(key, bytes) else None,
    )
