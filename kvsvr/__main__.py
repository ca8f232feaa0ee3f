"""`kvsvr serve`: run a node. With no options it serves the embedded default:
data in ./kvsvr-data, listening on 127.0.0.1:7420, no secret, no TLS.

A member of a replica group (`--node-id`, `--group`) must be given the
group's peer secret in a file (`--peer-secret-file`, made by `kvsvr
make-secret`): without it the node would accept any connection that says
it is a peer, so it refuses to start. Every option naming a file is
checked here, before storage is opened, and a bad one is a usage error
(exit 2) saying what is wrong. docs/security.md is the operator's guide.
"""

from __future__ import annotations

import logging
import ssl
import sys

import click
import trio

from kvsvr.protocol.addresses import DEFAULT_ADDRESS, DEFAULT_DATA_DIR, AddressError, parse_address
from kvsvr.protocol.limits import Limits
from kvsvr.protocol.peer_auth import PeerSecrets, SecretError
from kvsvr.replication.replica import ReplicaOptions
from kvsvr.shell.replica_node import ReplicaNode, parse_group, run_replica_until_signalled
from kvsvr.shell.secret_file import read_secret_file, write_secret_file
from kvsvr.shell.server import Node, run_until_signalled
from kvsvr.shell.tls import client_context, server_context
from kvsvr.storage import StorageError
from kvsvr.storage.rocks import RocksStorage

MAKE_A_SECRET = (
    "make one with `kvsvr make-secret FILE`, copy it to every member (mode 0600), and "
    "give each `--peer-secret-file FILE`"
)


@click.group()
def main() -> None:
    """KVSvr: a quorum-replicated key-value store."""


@main.command()
@click.option(
    "--data-dir",
    default=DEFAULT_DATA_DIR,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the node keeps its data (created if missing).",
)
@click.option(
    "--listen",
    default=DEFAULT_ADDRESS,
    show_default=True,
    help="HOST:PORT to serve clients on.",
)
@click.option(
    "--value-size-max-bytes",
    default=Limits.value_size_max_bytes,
    show_default=True,
    type=click.IntRange(1),
    help="The largest value a client may store.",
)
@click.option(
    "--frame-size-max-bytes",
    default=Limits.frame_size_max_bytes,
    show_default=True,
    type=click.IntRange(1024),
    help="The largest frame the node accepts.",
)
@click.option(
    "--connections-max",
    default=Limits.connections_max,
    show_default=True,
    type=click.IntRange(1),
    help="Client connections served at once.",
)
@click.option(
    "--node-id",
    type=click.IntRange(1),
    help="This node's id in --group (with --group: run as a member of a replica group).",
)
@click.option(
    "--group",
    help="The replica group, 3 or 5 members: 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT. "
    "The node listens on its own address and connects to peers from it.",
)
@click.option(
    "--peer-secret-file",
    type=click.Path(dir_okay=False),
    help="The group's shared secret (with --group; required there): members prove they "
    "hold it before a peer link carries anything. Made by `kvsvr make-secret`; mode 0600.",
)
@click.option(
    "--peer-secret-previous-file",
    type=click.Path(dir_okay=False),
    help="During a rotation, the secret being replaced: still accepted from peers "
    "that do not hold the new one yet (docs/security.md).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False),
    help="Serve TLS only, with this certificate (PEM, chain allowed); needs --tls-key. "
    "In a group, peer links then use TLS too.",
)
@click.option("--tls-key", type=click.Path(dir_okay=False), help="The private key of --tls-cert (PEM).")
@click.option(
    "--tls-cacert",
    type=click.Path(dir_okay=False),
    help="In a group with TLS: the CA certificates a peer's certificate must chain to "
    "(default: --tls-cert itself, for a group sharing one self-signed certificate).",
)
@click.option(
    "--tick-seconds",
    default=0.01,
    show_default=True,
    type=click.FloatRange(0.001, 1.0),
    help="How long a protocol tick lasts (timeouts are counted in ticks).",
)
@click.option(
    "--log-retained-records",
    default=ReplicaOptions.log_retained_records_max,
    show_default=True,
    type=click.IntRange(0),
    help="Replication log records kept for a lagging peer; past them the log is trimmed "
    "anyway and that peer catches up by state transfer.",
)
@click.option(
    "--payload-keep-ticks",
    default=ReplicaOptions.payload_keep_ticks,
    show_default=True,
    type=click.IntRange(1),
    help="Ticks a received payload that nothing pins is kept before it is collected.",
)
@click.option(
    "--test-only-bug",
    type=click.Choice(["read-without-quorum"]),
    hidden=True,
    help="Switch off a safety rule, to show the fault suite catches it. Never in production.",
)
@click.option("--verbose", "-v", is_flag=True, help="Log every connection event.")
def serve(
    data_dir: str,
    listen: str,
    value_size_max_bytes: int,
    frame_size_max_bytes: int,
    connections_max: int,
    node_id: int | None,
    group: str | None,
    peer_secret_file: str | None,
    peer_secret_previous_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_cacert: str | None,
    tick_seconds: float,
    log_retained_records: int,
    payload_keep_ticks: int,
    test_only_bug: str | None,
    verbose: bool,
) -> None:
    """Run a node until SIGTERM or SIGINT.

    \b
    Alone (the embedded default):  kvsvr serve
    In a replica group of three:   kvsvr make-secret group.secret   (once; copy to each)
                                   kvsvr serve --node-id 1 --data-dir d1 \\
                                     --group 1=127.0.0.1:7421,2=127.0.0.1:7422,3=127.0.0.1:7423 \\
                                     --peer-secret-file group.secret
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        host, port = parse_address(listen)
        limits = Limits(
            value_size_max_bytes=value_size_max_bytes,
            frame_size_max_bytes=frame_size_max_bytes,
            connections_max=connections_max,
        )
    except (AddressError, ValueError) as error:
        raise click.UsageError(str(error)) from None
    if (node_id is None) != (group is None):
        raise click.UsageError("--node-id and --group go together")
    members = None
    if group is not None:
        try:
            members = parse_group(group)
        except AddressError as error:
            raise click.UsageError(str(error)) from None
        if node_id not in members:
            raise click.UsageError(f"--node-id {node_id} is not in --group")
    peer_secrets = _peer_secrets(members is not None, peer_secret_file, peer_secret_previous_file)
    tls, peer_tls = _tls_contexts(members is not None, tls_cert, tls_key, tls_cacert)
    try:
        storage = RocksStorage(data_dir)
    except StorageError as error:
        if error.corrupt:
            # Starting anyway could forget promises and votes this node made:
            # refuse, and leave the data as it is for the operator.
            click.echo(f"kvsvr: refusing to start: {error}", err=True)
            click.echo("kvsvr: this node must not rejoin its group with this data", err=True)
        else:
            click.echo(f"kvsvr: {error}", err=True)
        sys.exit(2)
    if storage.torn_tail_dropped is not None:
        click.echo(
            "kvsvr: recovered from a crash: dropped the last write-ahead log record, cut "
            f"short by the crash and never synced ({storage.torn_tail_dropped})",
            err=True,
        )
    if members is None:
        trio.run(run_until_signalled, Node(storage, limits, tls), host, port)
        return
    options = ReplicaOptions(
        log_retained_records_max=log_retained_records,
        payload_keep_ticks=payload_keep_ticks,
        bug_read_without_quorum=test_only_bug == "read-without-quorum",
    )
    if test_only_bug:
        logging.getLogger("kvsvr").warning("TEST-ONLY BUG SWITCHED ON: %s", test_only_bug)
    try:
        node = ReplicaNode(node_id, members, storage, limits, options, peer_secrets=peer_secrets,
                           tick_seconds=tick_seconds, tls=tls, peer_tls=peer_tls)
    except ValueError as error:  # limits that contradict each other
        storage.close()
        raise click.UsageError(str(error)) from None
    trio.run(run_replica_until_signalled, node)


def _peer_secrets(in_group: bool, current_file: str | None,
                  previous_file: str | None) -> PeerSecrets | None:
    """The secrets from their files, for a group member; a usage error otherwise."""
    if not in_group:
        if current_file or previous_file:
            raise click.UsageError("--peer-secret-file is for a member of a group (--group)")
        return None
    if current_file is None:
        raise click.UsageError(
            "a member of a replica group needs the group's secret, --peer-secret-file: "
            + MAKE_A_SECRET)
    current = _read_secret("--peer-secret-file", current_file)
    previous = None
    if previous_file is not None:
        previous = _read_secret("--peer-secret-previous-file", previous_file)
    return PeerSecrets(current, previous)


def _read_secret(option: str, path: str) -> bytes:
    try:
        return read_secret_file(path)
    except SecretError as error:
        raise click.UsageError(f"{option} {path}: refusing it: {error}") from None


def _tls_contexts(in_group: bool, cert: str | None, key: str | None,
                  cacert: str | None) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """The server context, and for a group member the context its peer links dial with."""
    if (cert is None) != (key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if cert is None:
        if cacert is not None:
            raise click.UsageError("--tls-cacert needs --tls-cert and --tls-key")
        return None, None
    try:
        tls = server_context(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise click.UsageError(f"--tls-cert {cert} / --tls-key {key}: {error}") from None
    if not in_group:
        if cacert is not None:
            raise click.UsageError("--tls-cacert is for a member of a group (--group)")
        return tls, None
    trusted = cacert or cert
    try:
        return tls, client_context(trusted)
    except (OSError, ssl.SSLError) as error:
        raise click.UsageError(f"--tls-cacert {trusted}: {error}") from None


@main.command("make-secret")
@click.argument("file", type=click.Path(dir_okay=False))
def make_secret(file: str) -> None:
    """Write a new random peer secret to FILE (created, mode 0600, never overwritten).

    \b
    kvsvr make-secret group.secret
    Copy the file to every member of the group, keeping it mode 0600, and start
    each with --peer-secret-file group.secret.
    """
    try:
        write_secret_file(file)
    except FileExistsError:
        raise click.UsageError(f"{file} exists; refusing to overwrite a secret") from None
    except OSError as error:
        click.echo(f"kvsvr: cannot write {file}: {error.strerror}", err=True)
        sys.exit(2)
    click.echo(f"wrote a new peer secret to {file} (mode 0600)")


if __name__ == "__main__":
    main()
