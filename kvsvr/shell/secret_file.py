"""Peer secret files: made by `kvsvr make-secret`, read by `kvsvr serve`.

Theory. The secret never appears on a command line (where `ps` and shell
history show it to everyone on the machine); it lives in a file only its
owner can read, as ssh insists of a private key. Reading one checks, at
the edge, before the node starts: it is a regular file, no permission bit
for group or others is set, and it holds at least
peer_auth.SECRET_SIZE_MIN_BYTES as hex digits (peer_auth.parse_secret).
The file is opened once and checked through that open descriptor, so the
file checked is the file read.
"""

from __future__ import annotations

import os
import secrets
import stat

from kvsvr.protocol.peer_auth import SecretError, parse_secret

# What make-secret writes: 256 bits, twice the minimum.
MADE_SECRET_SIZE_BYTES = 32
# A secret file is a line of hex; anything longer is not one.
SECRET_FILE_SIZE_MAX_BYTES = 4096


def read_secret_file(path: str) -> bytes:
    """The secret in `path`, or SecretError saying what is wrong with the file."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise SecretError(f"cannot open it: {error.strerror}") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise SecretError("it is not a regular file")
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077:
            raise SecretError(
                f"its mode {mode:04o} lets group or others read or change it; "
                f"run `chmod 600 {path}`")
        content = os.read(descriptor, SECRET_FILE_SIZE_MAX_BYTES + 1)
    finally:
        os.close(descriptor)
    if len(content) > SECRET_FILE_SIZE_MAX_BYTES:
        raise SecretError(f"it is over {SECRET_FILE_SIZE_MAX_BYTES} bytes; "
                          "a secret file is one line of hex digits")
    return parse_secret(content)


def write_secret_file(path: str) -> None:
    """Write a fresh random secret to a new file `path`, mode 0600; never
    overwrites (an existing secret may be the group's only copy)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                         0o600)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(file.fileno(), 0o600)  # whatever the umask
        file.write(secrets.token_hex(MADE_SECRET_SIZE_BYTES) + "\n")


__all__ = ["MADE_SECRET_SIZE_BYTES", "SecretError", "read_secret_file", "write_secret_file"]
