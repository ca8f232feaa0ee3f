"""TLS on the client port: contexts, and the server's side of a connection.

Theory. TLS is optional and off by default (the embedded single node needs
no configuration). A node started with `--tls-cert/--tls-key` speaks only
TLS on its one port, to clients and peers alike: a client frame there is
never read as a request. The first byte tells them apart without reading
anything else: a TLS connection opens with a handshake record (0x16),
while a frame opens with the high byte of its length, 0 for any frame a
node accepts. A plain client is answered one plain error frame saying the
node wants TLS, then closed, so it fails at once and clearly rather than
waiting on a handshake it does not know it is in.

The handshake is done before anything else on the connection and bounded
by TLS_HANDSHAKE_TIMEOUT_SECONDS, so a connection that stalls in it costs
a bounded time; such connections count towards `connections_max` (server.py).

Verification: clients verify the node's certificate against `--cacert`
and check that it names the address they dialled (an IP address needs an
IP entry in the certificate's subjectAltName). Peers do the same with the
node's `--tls-cacert`, or with its own `--tls-cert` when no CA is given,
which fits a group sharing one self-signed certificate that names every
member's address.
"""

from __future__ import annotations

import logging
import socket
import ssl

import trio

from kvsvr.protocol.errors import Unavailable
from kvsvr.protocol.wire import error_frame

log = logging.getLogger("kvsvr.shell.tls")

TLS_HANDSHAKE_TIMEOUT_SECONDS = 10.0
# The first byte of a TLS record carrying a handshake message (RFC 8446 5.1).
_TLS_HANDSHAKE_RECORD = 0x16
_PLAIN_CLIENT_ANSWER_TIMEOUT_SECONDS = 1.0
_DRAIN_SIZE_BYTES = 64 * 1024


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The context a node serves TLS with; raises OSError or ssl.SSLError for bad files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def client_context(cafile: str) -> ssl.SSLContext:
    """A context that trusts the certificates in `cafile` and checks the name dialled."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def accept_tls(stream: trio.SocketStream, context: ssl.SSLContext,
                     timeout_seconds: float = TLS_HANDSHAKE_TIMEOUT_SECONDS) -> trio.SSLStream | None:
    """The TLS stream over an accepted connection, handshake done; None (after
    answering a plain client) when the connection is not TLS or the handshake fails."""
    with trio.move_on_after(timeout_seconds):
        try:
            first = await stream.socket.recv(1, socket.MSG_PEEK)
        except OSError:
            return None
        if not first:
            return None
        if first[0] != _TLS_HANDSHAKE_RECORD:
            await _answer_plain_client(stream)
            return None
        tls_stream = trio.SSLStream(stream, context, server_side=True)
        try:
            await tls_stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.info("TLS handshake failed: %s", error.__cause__ or error)
            return None
        return tls_stream
    log.info("TLS handshake not finished after %ss; closing", timeout_seconds)
    return None


async def _answer_plain_client(stream: trio.SocketStream) -> None:
    """One plain `unavailable` frame, then end-of-stream; what the client sent is
    read and dropped until it closes too, since closing with unread bytes would
    reset the connection and could discard the answer before the client reads it."""
    error = Unavailable("this node serves TLS only: connect with TLS "
                        "(kvctl --cacert FILE, Client(cacert=FILE))")
    with trio.move_on_after(_PLAIN_CLIENT_ANSWER_TIMEOUT_SECONDS):
        try:
            await stream.send_all(error_frame(0, error))
            await stream.send_eof()
            while await stream.receive_some(_DRAIN_SIZE_BYTES):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def connect_tls(stream: trio.SocketStream, context: ssl.SSLContext, host: str,
                      address: str) -> trio.SSLStream:
    """The client side: wrap a connected stream and handshake, checking the
    certificate names `host`; Unavailable (naming `address`) on failure."""
    tls_stream = trio.SSLStream(stream, context, server_hostname=host)
    try:
        await tls_stream.do_handshake()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
        await trio.aclose_forcefully(stream)
        reason = error.__cause__ or error
        raise Unavailable(f"{address}: TLS handshake failed ({reason}); "
                          "is the node serving TLS, with a certificate --cacert trusts?") from None
    except BaseException:  # cancelled (a deadline): the connection is not handed on
        await trio.aclose_forcefully(stream)
        raise
    return tls_stream


__all__ = ["TLS_HANDSHAKE_TIMEOUT_SECONDS", "accept_tls", "client_context", "connect_tls",
           "server_context"]
