"""`kvsvr serve`: run a node. With no options it serves the embedded default:
data in ./kvsvr-data, listening on 127.0.0.1:7420."""

from __future__ import annotations

import logging
import sys

import click
import trio

from kvsvr.addresses import DEFAULT_ADDRESS, DEFAULT_DATA_DIR, AddressError, parse_address
from kvsvr.limits import Limits
from kvsvr.replication.node import ReplicaNode, parse_group, run_replica_until_signalled
from kvsvr.replication.replica import ReplicaOptions
from kvsvr.server import Node, run_until_signalled
from kvsvr.storage import RocksStorage, StorageError


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
    tick_seconds: float,
    log_retained_records: int,
    payload_keep_ticks: int,
    test_only_bug: str | None,
    verbose: bool,
) -> None:
    """Run a node until SIGTERM or SIGINT.

    \b
    Alone (the embedded default):  kvsvr serve
    In a replica group of three:   kvsvr serve --node-id 1 --data-dir d1 \\
                                     --group 1=127.0.0.1:7421,2=127.0.0.1:7422,3=127.0.0.1:7423
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
    if members is None:
        trio.run(run_until_signalled, Node(storage, limits), host, port)
        return
    options = ReplicaOptions(
        log_retained_records_max=log_retained_records,
        payload_keep_ticks=payload_keep_ticks,
        bug_read_without_quorum=test_only_bug == "read-without-quorum",
    )
    if test_only_bug:
        logging.getLogger("kvsvr").warning("TEST-ONLY BUG SWITCHED ON: %s", test_only_bug)
    try:
        node = ReplicaNode(node_id, members, storage, limits, options, tick_seconds=tick_seconds)
    except ValueError as error:
        storage.close()
        raise click.UsageError(str(error)) from None
    trio.run(run_replica_until_signalled, node)


if __name__ == "__main__":
    main()
