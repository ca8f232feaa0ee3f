"""`kvsvr serve`: run a node. With no options it serves the embedded default:
data in ./kvsvr-data, listening on 127.0.0.1:7420."""

from __future__ import annotations

import logging
import sys

import click
import trio

from kvsvr.addresses import DEFAULT_ADDRESS, DEFAULT_DATA_DIR, AddressError, parse_address
from kvsvr.limits import Limits
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
@click.option("--verbose", "-v", is_flag=True, help="Log every connection event.")
def serve(
    data_dir: str,
    listen: str,
    value_size_max_bytes: int,
    frame_size_max_bytes: int,
    connections_max: int,
    verbose: bool,
) -> None:
    """Run a node until SIGTERM or SIGINT."""
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
    try:
        storage = RocksStorage(data_dir)
    except StorageError as error:
        click.echo(f"kvsvr: {error}", err=True)
        sys.exit(2)
    trio.run(run_until_signalled, Node(storage, limits), host, port)


if __name__ == "__main__":
    main()
