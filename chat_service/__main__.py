"""`chat-service serve --kv HOST:PORT[,...] --listen HOST:PORT`: one chat_service instance.

Theory of operation. One trio event loop runs everything: the store client
(one pipelined connection per node), the fan-out workers and sweep, the
notify poller, and hypercorn serving the HTTP API. Instances share nothing
but the store, so as many as wanted can run side by side against one
replica group. SIGTERM or SIGINT stops the server; a fan-out round cut off
by the stop is finished by the next instance that sweeps (every step of it
is safe to redo).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import uuid

import click
import trio

from kvsvr.protocol.addresses import AddressError, parse_address, parse_address_list

DEFAULT_LISTEN = "127.0.0.1:8080"
STORE_TIMEOUT_SECONDS = 3.0


async def serve(kv: str, listen: str, *, instance_id: str | None = None,
                store_timeout_seconds: float = STORE_TIMEOUT_SECONDS) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    from chat_service.api import build_app
    from chat_service.service import ChatService
    from kvsvr.client import Client

    config = Config()
    config.bind = [listen]
    config.accesslog = None
    config.graceful_timeout = 2.0
    stop = trio.Event()
    async with Client(kv, timeout_seconds=store_timeout_seconds) as store:
        service = ChatService(store, instance_id=instance_id or uuid.uuid4().hex[:12])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, stop)
            await nursery.start(service.run)
            await hypercorn_serve(build_app(service), config, shutdown_trigger=stop.wait)
            nursery.cancel_scope.cancel()


async def _stop_on_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return


def _check_addresses(kv: str, listen: str) -> None:
    try:
        parse_address_list(kv)
        parse_address(listen)
    except AddressError as error:
        raise click.BadParameter(str(error)) from None


@click.group()
def main() -> None:
    """The chat service on KVSvr."""


@main.command("serve")
@click.option("--kv", required=True, help="the store's nodes, HOST:PORT[,HOST:PORT...]")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, help="HTTP address")
@click.option("--instance-id", default=None, help="name in leases and logs (default: random)")
@click.option("--store-timeout-seconds", default=STORE_TIMEOUT_SECONDS, show_default=True,
              type=float, help="deadline of one store call")
@click.option("--log-level", default="WARNING", show_default=True)
def serve_command(kv: str, listen: str, instance_id: str | None,
                  store_timeout_seconds: float, log_level: str) -> None:
    """Serve the HTTP API until SIGTERM or Ctrl-C."""
    _check_addresses(kv, listen)
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trio.run(lambda: serve(kv, listen, instance_id=instance_id,
                           store_timeout_seconds=store_timeout_seconds))


@main.command("openapi")
def openapi_command() -> None:
    """Print the API's OpenAPI description (JSON)."""
    from chat_service.api import build_app

    click.echo(json.dumps(build_app(None).openapi(), indent=2))


if __name__ == "__main__":
    main()
