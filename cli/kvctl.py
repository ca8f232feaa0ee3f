"""kvctl: the KVSvr command line (click), for people and for scripts.

Theory. Each command opens a client to `--cluster`, makes its calls, and
prints the result: readable text by default, one JSON object with
`--json`. A failure is one line on stderr (`kvctl: condition failed: ...`)
and a stable exit code, never a traceback; with `--json` the error is also
printed as `{"error": {...}}` on stdout. The codes (EXIT_* below) follow
what a failure means for a write (kvsvr.protocol.errors): 4 says the operation did
not happen, 5 says its outcome is unknown.

How text on the command line becomes bytes and back: cli/encoding.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import click
import trio

from cli import bench as bench_module
from cli.encoding import (
    bytes_for_json,
    bytes_for_people,
    hex_to_bytes,
    row_id_for_json,
    row_id_for_people,
    row_id_to_bytes,
    text_to_bytes,
)
from kvsvr.client import DEFAULT_TIMEOUT_SECONDS, Client, Page, Row, ScanItem
from kvsvr.protocol.addresses import DEFAULT_ADDRESS, AddressError, parse_address_list
from kvsvr.protocol.errors import KvError, NotFound
from kvsvr.shell.tls import client_context

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2  # click's own code for a usage error
EXIT_CONDITION_FAILED = 3
EXIT_UNAVAILABLE = 4
EXIT_TIMEOUT = 5
EXIT_ERROR = 6
EXIT_INTERRUPTED = 130

EXIT_CODE_BY_ERROR_CODE = {
    "not_found": EXIT_NOT_FOUND,
    "condition_failed": EXIT_CONDITION_FAILED,
    "overloaded": EXIT_UNAVAILABLE,
    "unavailable": EXIT_UNAVAILABLE,
    "timeout": EXIT_TIMEOUT,
}  # every other code (bad_request, too_large, checksum, internal): EXIT_ERROR

# How each error code reads on the one-line error, before the node's message.
ERROR_HEADLINES = {
    "not_found": "not found",
    "condition_failed": "condition failed",
    "overloaded": "overloaded, the operation did not happen (retry later)",
    "unavailable": "unavailable, the operation did not happen",
    "timeout": "timeout, outcome unknown: the operation may or may not have taken effect",
    "bad_request": "bad request",
    "too_large": "too large",
    "checksum": "checksum error",
    "internal": "internal error",
}

# The one table of exit codes: --help prints it, docs/kvctl.md shows it
# (tests/cli/test_kvctl.py checks the two agree).
EXIT_MEANINGS = (
    (EXIT_OK, "ok"),
    (EXIT_NOT_FOUND, "not found (the key or row holds no value)"),
    (EXIT_USAGE, "usage error (bad option or argument)"),
    (EXIT_CONDITION_FAILED, "condition failed; the current version is printed"),
    (EXIT_UNAVAILABLE, "unavailable or overloaded: the operation did not happen"),
    (EXIT_TIMEOUT, "timeout: the outcome is unknown, a write may or may not have happened"),
    (EXIT_ERROR, "any other error from the node (bad request, too large, checksum, internal)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C); a write in flight has an unknown outcome"),
)

EPILOG = "\b\nExit codes (stable; scripts may rely on them):\n" + "".join(
    f"  {code}  {meaning}\n" for code, meaning in EXIT_MEANINGS
) + """
\b
Bytes: keys, values and row ids are UTF-8 text, or hex with --hex. A VALUE
of - is read from stdin as raw bytes. Output bytes that are not UTF-8 are
shown as hex:<digits>, in JSON as {"hex": "<digits>"}; with --hex every
byte string is shown as hex. A ROW given as a decimal integer N is the
8-byte big-endian id N, the id `table append` gives; such ids print as N.

\b
Examples:
  kvctl put greeting hello            # prints the new version
  kvctl get greeting                  # prints hello
  kvctl --json get greeting           # {"key": ..., "value": ..., "version": ...}
  kvctl cas greeting hi --expected-version 1
  kvctl scan --prefix user/ --limit 10
  kvctl table append room/1 "first message"
  kvctl table sync room/1 --since 0
  KVSVR_CLUSTER=10.0.0.5:7420 kvctl status
  kvctl --cacert ca.pem status        # a node serving TLS
"""

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The global options every command reads."""

    cluster: str
    json_output: bool
    hex_mode: bool
    timeout_seconds: float
    cacert: str | None = None  # connect with TLS, trusting these CA certificates

    def key(self, text: str, what: str = "KEY") -> bytes:
        return text_to_bytes(text, self.hex_mode, what)

    def optional_key(self, text: str | None, what: str) -> bytes | None:
        return None if text is None else self.key(text, what)

    def value(self, text: str) -> bytes:
        if text == "-":
            return click.get_binary_stream("stdin").read()
        return text_to_bytes(text, self.hex_mode, "VALUE")

    def row_id(self, text: str) -> bytes:
        return row_id_to_bytes(text, self.hex_mode)

    def show(self, data: bytes) -> str:
        return bytes_for_people(data, self.hex_mode)

    def json_bytes(self, data: bytes | None) -> Any:
        return None if data is None else bytes_for_json(data, self.hex_mode)

    def show_row(self, row_id: bytes) -> str:
        return row_id_for_people(row_id, self.hex_mode)

    def json_row(self, row_id: bytes) -> Any:
        return row_id_for_json(row_id, self.hex_mode)

    def emit_written(self, key: bytes, version: int, human: str | None = None) -> None:
        """Print the version a write made: `version N`, or {"key", "version"}."""
        self.emit(human or f"version {version}", {"key": self.json_bytes(key), "version": version})

    def emit(self, human: str | list[str], json_object: Any) -> None:
        """Print the human text, or the JSON object with --json."""
        if self.json_output:
            click.echo(json.dumps(json_object, ensure_ascii=False))
        elif isinstance(human, list):
            for line in human:
                click.echo(line)
        else:
            click.echo(human)


def fail(settings: Settings, error: KvError) -> NoReturn:
    """Report a node's error in one line (and as JSON with --json), then exit with its code."""
    headline = ERROR_HEADLINES.get(error.code, error.code.replace("_", " "))
    message = f"{headline}: {error.message}"
    if error.code == "condition_failed" and error.version is not None:
        message += f" (current version {error.version})"
    if settings.json_output:
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.version is not None:
            body["version"] = error.version
        click.echo(json.dumps({"error": body}, ensure_ascii=False))
    click.echo(f"kvctl: {message}", err=True)
    raise click.exceptions.Exit(EXIT_CODE_BY_ERROR_CODE.get(error.code, EXIT_ERROR))


def run_with_clients(
    settings: Settings, count: int, operation: Callable[[list[Client]], Awaitable[T]]
) -> T:
    """Open `count` clients (one connection each), run `operation`, map errors to exits."""

    ssl_context = _tls_context(settings)

    async def call() -> tuple[T | None, KvError | None]:
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    Client(settings.cluster, timeout_seconds=settings.timeout_seconds,
                           ssl_context=ssl_context)
                )
                for _ in range(count)
            ]
            # Caught here, inside the clients' nurseries: past them an error
            # would arrive wrapped in an ExceptionGroup.
            try:
                return await operation(clients), None
            except KvError as error:
                return None, error

    try:
        result, error = trio.run(call)
    except BaseException as interruption:
        if not _is_keyboard_interrupt(interruption):
            raise
        click.echo("kvctl: interrupted; the outcome of a write in flight is unknown", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    if error is not None:
        fail(settings, error)
    return result  # type: ignore[return-value]


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The context --cacert asks for; a file that is no CA bundle is a usage error."""
    if settings.cacert is None:
        return None
    try:
        return client_context(settings.cacert)
    except (OSError, ssl.SSLError) as error:
        raise click.BadParameter(f"{settings.cacert}: {error}", param_hint="--cacert") from None


def _is_keyboard_interrupt(error: BaseException) -> bool:
    """Ctrl-C, bare or (raised inside a client's nursery) in an exception group."""
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(KeyboardInterrupt) is not None
    return isinstance(error, KeyboardInterrupt)


def run(settings: Settings, operation: Callable[[Client], Awaitable[T]]) -> T:
    """Run `operation` with one client; a node's error becomes a message and an exit code."""
    return run_with_clients(settings, 1, lambda clients: operation(clients[0]))


def not_found(settings: Settings, what: str) -> NoReturn:
    fail(settings, NotFound(f"{what} holds no value"))


async def collect_pages(
    fetch_page: Callable[[bytes | None, int | None], Awaitable[Page]],
    limit: int | None,
    resume: bytes | None,
) -> tuple[list, bytes | None]:
    """Follow resume tokens until `limit` items (None: all) or the end; return items, token."""
    items: list = []
    while True:
        wanted = None if limit is None else limit - len(items)
        page = await fetch_page(resume, wanted)
        items.extend(page.items)
        resume = page.resume
        if resume is None or (limit is not None and len(items) >= limit):
            return items, resume


def resume_note(resume: bytes | None) -> list[str]:
    return [] if resume is None else [f"(more: continue with --resume {resume.hex()})"]


def resume_token(text: str | None) -> bytes | None:
    return None if text is None else hex_to_bytes(text, "--resume")


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
LIMIT_OPTION = click.option(
    "--limit",
    type=click.IntRange(1),
    metavar="N",
    help="Stop after this many items (default: all, fetched page by page).",
)
RESUME_OPTION = click.option(
    "--resume", metavar="TOKEN", help="Continue a limited listing from the token it printed."
)


@click.group(context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@click.option(
    "--cluster",
    envvar="KVSVR_CLUSTER",
    show_envvar=True,
    default=DEFAULT_ADDRESS,
    show_default=True,
    metavar="HOST:PORT[,HOST:PORT...]",
    help="The node(s) to talk to; tried in order until one connects.",
)
@click.option(
    "--cacert",
    envvar="KVSVR_CACERT",
    show_envvar=True,
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Connect with TLS, trusting the CA certificate(s) in FILE (PEM); for nodes "
    "started with --tls-cert. Without it, connections are plain TCP.",
)
@click.option("--json", "json_output", is_flag=True, help="Print results (and errors) as JSON.")
@click.option("--hex", "hex_mode", is_flag=True, help="Keys, values and row ids are hex, in and out.")
@click.option(
    "--timeout",
    "timeout_seconds",
    type=click.FloatRange(0, min_open=True),
    default=DEFAULT_TIMEOUT_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="Deadline for each request; past it the outcome is unknown (exit 5).",
)
@click.pass_context
def main(ctx: click.Context, cluster: str, cacert: str | None, json_output: bool,
         hex_mode: bool, timeout_seconds: float) -> None:
    """Talk to a KVSvr store: read and write keys and tables, check a node.

    Start a node first (`kvsvr serve` serves 127.0.0.1:7420 with data in
    ./kvsvr-data), then run a command; `kvctl COMMAND --help` explains each.
    """
    try:
        parse_address_list(cluster)
    except AddressError as error:
        raise click.BadParameter(str(error), param_hint="--cluster") from None
    ctx.obj = Settings(cluster, json_output, hex_mode, timeout_seconds, cacert)


# -- Key-Value -----------------------------------------------------------------------


@main.command()
@click.argument("key")
@click.argument("value")
@click.pass_obj
def put(settings: Settings, key: str, value: str) -> None:
    """Store VALUE under KEY; prints the key's new version.

    \b
    kvctl put greeting hello
    kvctl put photo - < photo.jpg      # the value read from stdin
    """
    key_bytes = settings.key(key)
    value_bytes = settings.value(value)
    version = run(settings, lambda client: client.put(key_bytes, value_bytes))
    settings.emit_written(key_bytes, version)


@main.command()
@click.argument("key")
@click.option("--raw", is_flag=True, help="Write the value's exact bytes, no newline (no --json).")
@click.pass_obj
def get(settings: Settings, key: str, raw: bool) -> None:
    """Print the value of KEY (exit 1 if it holds none).

    \b
    kvctl get greeting
    kvctl --json get greeting          # {"key": "greeting", "value": "hello", "version": 1}
    kvctl get photo --raw > photo.jpg
    """
    key_bytes = settings.key(key)
    item = run(settings, lambda client: client.get(key_bytes))
    if item is None:
        not_found(settings, f"key {key!r}")
    if raw:
        click.get_binary_stream("stdout").write(item.value)
        return
    settings.emit(
        settings.show(item.value),
        {
            "key": settings.json_bytes(key_bytes),
            "value": settings.json_bytes(item.value),
            "version": item.version,
        },
    )


@main.command()
@click.argument("key")
@click.option("--expected-version", type=click.IntRange(0), metavar="N",
              help="Delete only if KEY is at version N (else exit 3).")
@click.pass_obj
def delete(settings: Settings, key: str, expected_version: int | None) -> None:
    """Delete KEY; prints the version of the tombstone left behind.

    A delete is a new version of the key (versions never go backwards), so
    deleting a key that holds no value also succeeds.
    """
    key_bytes = settings.key(key)
    version = run(
        settings, lambda client: client.delete(key_bytes, expected_version=expected_version)
    )
    settings.emit_written(key_bytes, version, f"deleted at version {version}")


@main.command()
@click.argument("key")
@click.argument("value")
@click.option("--expected-version", required=True, type=click.IntRange(0), metavar="N",
              help="The version KEY must be at (0: never written).")
@click.pass_obj
def cas(settings: Settings, key: str, value: str, expected_version: int) -> None:
    """Compare-and-set: store VALUE only if KEY is at version N.

    Prints the new version; if KEY is at another version nothing is stored,
    the current version is printed and the exit code is 3.

    \b
    kvctl cas counter 1 --expected-version 0     # create, only if never written
    kvctl cas counter 2 --expected-version 1
    """
    key_bytes = settings.key(key)
    value_bytes = settings.value(value)
    version = run(
        settings,
        lambda client: client.cas(key_bytes, value_bytes, expected_version=expected_version),
    )
    settings.emit_written(key_bytes, version)


@main.command(short_help="List live keys, by prefix or range.")
@click.option("--prefix", help="Only keys starting with this.")
@click.option("--start", help="First key of the range (inclusive).")
@click.option("--end", help="End of the range (exclusive).")
@LIMIT_OPTION
@RESUME_OPTION
@click.pass_obj
def scan(settings: Settings, prefix: str | None, start: str | None, end: str | None,
         limit: int | None, resume: str | None) -> None:
    """List live keys in key order: KEY<TAB>VERSION<TAB>VALUE per line.

    Give a --prefix, or a --start/--end range, or neither for every key.
    Table keys show [table] for their value. With --limit, a listing that
    stopped early prints a token to continue from with --resume.

    \b
    kvctl scan --prefix user/
    kvctl scan --start a --end m --limit 100
    """
    if prefix is not None and (start is not None or end is not None):
        raise click.UsageError("give either --prefix or --start/--end, not both")
    bounds = {
        "prefix": settings.optional_key(prefix, "--prefix"),
        "start": settings.optional_key(start, "--start"),
        "end": settings.optional_key(end, "--end"),
    }

    async def listing(client: Client) -> tuple[list[ScanItem], bytes | None]:
        async def page(token: bytes | None, wanted: int | None) -> Page:
            return await client.scan_page(**bounds, limit=wanted, resume=token)

        return await collect_pages(page, limit, resume_token(resume))

    items, next_resume = run(settings, listing)
    settings.emit(
        [
            f"{settings.show(item.key)}\t{item.version}\t"
            + ("[table]" if item.value is None else settings.show(item.value))
            for item in items
        ]
        + resume_note(next_resume),
        {
            "items": [
                {
                    "key": settings.json_bytes(item.key),
                    "value": settings.json_bytes(item.value),
                    "version": item.version,
                    "kind": item.kind,
                }
                for item in items
            ],
            "resume": None if next_resume is None else next_resume.hex(),
        },
    )


# -- Key-Table -----------------------------------------------------------------------


@main.group(short_help="Key-Table commands: append, write, sync, rows, get.")
def table() -> None:
    """Key-Table: a key that holds rows, changed in versioned batches.

    \b
    kvctl table append room/1 "hello"             # prints the new row's id
    kvctl table write prefs --put theme=dark --delete font
    kvctl table sync room/1 --since 0             # rows changed after version 0
    kvctl table rows prefs
    kvctl table get room/1 1
    """


def _row_json(settings: Settings, row: Row) -> dict:
    return {
        "row": settings.json_row(row.row_id),
        "version": row.version,
        "value": settings.json_bytes(row.value),
    }


def _row_line(settings: Settings, row: Row) -> str:
    value = "[deleted]" if row.value is None else settings.show(row.value)
    return f"{settings.show_row(row.row_id)}\t{row.version}\t{value}"


@table.command(short_help="Append a row; prints its id.")
@click.argument("key")
@click.argument("value")
@click.pass_obj
def append(settings: Settings, key: str, value: str) -> None:
    """Append a row holding VALUE; prints its id (the table's new version)."""
    key_bytes = settings.key(key)
    value_bytes = settings.value(value)
    version = run(settings, lambda client: client.append(key_bytes, value_bytes))
    settings.emit(
        str(version), {"key": settings.json_bytes(key_bytes), "row": version, "version": version}
    )


@table.command()
@click.argument("key")
@click.option("--put", "puts", multiple=True, metavar="ROW=VALUE",
              help="Set a row (repeatable). VALUE is taken literally.")
@click.option("--delete", "deletes", multiple=True, metavar="ROW", help="Delete a row (repeatable).")
@click.option("--expected-version", type=click.IntRange(0), metavar="N",
              help="Write only if the table is at version N (else exit 3).")
@click.pass_obj
def write(settings: Settings, key: str, puts: tuple[str, ...], deletes: tuple[str, ...],
          expected_version: int | None) -> None:
    """Put and delete rows of KEY in one new version; prints it.

    \b
    kvctl table write prefs --put theme=dark --put lang=en --delete font
    """
    if not puts and not deletes:
        raise click.UsageError("give at least one --put ROW=VALUE or --delete ROW")
    pairs = []
    for assignment in puts:
        row, separator, value = assignment.partition("=")
        if not separator:
            raise click.BadParameter(f"{assignment!r} is not ROW=VALUE", param_hint="--put")
        pairs.append((settings.row_id(row), text_to_bytes(value, settings.hex_mode, "--put")))
    key_bytes = settings.key(key)
    row_ids = [settings.row_id(row) for row in deletes]
    version = run(
        settings,
        lambda client: client.table_write(
            key_bytes, pairs, row_ids, expected_version=expected_version
        ),
    )
    settings.emit_written(key_bytes, version)


@table.command(short_help="Rows changed after a version.")
@click.argument("key")
@click.option("--since", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="Return rows changed after version N.")
@click.option("--limit", type=click.IntRange(1), metavar="N",
              help="At most about N rows in one answer (whole versions); default: all.")
@click.pass_obj
def sync(settings: Settings, key: str, since: int, limit: int | None) -> None:
    """Rows of KEY changed after version N, and the version they bring you to.

    Prints `version V` then ROW<TAB>VERSION<TAB>VALUE per row ([deleted]
    for a deleted row). Sync again with --since V to get later changes.
    """
    key_bytes = settings.key(key)

    async def changes(client: Client) -> tuple[int, list[Row], bool]:
        rows: list[Row] = []
        version = since
        while True:
            result = await client.sync(key_bytes, version, limit=limit)
            rows.extend(result.rows)
            version = result.version
            if limit is not None or not result.more:
                return version, rows, result.more

    version, rows, more = run(settings, changes)
    header = f"version {version}" + (f" (more: sync again with --since {version})" if more else "")
    settings.emit(
        [header] + [_row_line(settings, row) for row in rows],
        {
            "key": settings.json_bytes(key_bytes),
            "version": version,
            "rows": [_row_json(settings, row) for row in rows],
            "more": more,
        },
    )


@table.command(short_help="List the live rows of a table.")
@click.argument("key")
@click.option("--start-row", metavar="ROW", help="First row id to list (inclusive).")
@LIMIT_OPTION
@RESUME_OPTION
@click.pass_obj
def rows(settings: Settings, key: str, start_row: str | None, limit: int | None,
         resume: str | None) -> None:
    """List the live rows of KEY in row id order: ROW<TAB>VERSION<TAB>VALUE."""
    key_bytes = settings.key(key)
    first = resume_token(resume)
    if first is None and start_row is not None:
        first = settings.row_id(start_row)

    async def listing(client: Client) -> tuple[list[Row], bytes | None]:
        async def page(token: bytes | None, wanted: int | None) -> Page:
            return await client.table_rows(key_bytes, start_row=token, limit=wanted)

        return await collect_pages(page, limit, first)

    found, next_resume = run(settings, listing)
    settings.emit(
        [_row_line(settings, row) for row in found] + resume_note(next_resume),
        {
            "key": settings.json_bytes(key_bytes),
            "rows": [_row_json(settings, row) for row in found],
            "resume": None if next_resume is None else next_resume.hex(),
        },
    )


@table.command(name="get")
@click.argument("key")
@click.argument("row")
@click.pass_obj
def table_get(settings: Settings, key: str, row: str) -> None:
    """Print the value of row ROW of KEY (exit 1 if it holds none)."""
    key_bytes = settings.key(key)
    row_id = settings.row_id(row)
    found = run(settings, lambda client: client.table_get(key_bytes, row_id))
    if found is None:
        not_found(settings, f"row {row!r} of {key!r}")
    settings.emit(
        settings.show(found.value),
        {
            "key": settings.json_bytes(key_bytes),
            "row": settings.json_row(row_id),
            "value": settings.json_bytes(found.value),
            "version": found.version,
        },
    )


# -- the node ------------------------------------------------------------------------


@main.command(short_help="Show what the node reports about itself.")
@click.pass_obj
def status(settings: Settings) -> None:
    """Show what the node reports about itself (uptime, connections, commits)."""
    report = run(settings, lambda client: client.status())
    settings.emit(
        [
            f"{name}: {', '.join(map(str, value)) if isinstance(value, list) else value}"
            for name, value in report.items()
        ],
        report,
    )


# -- benchmarks ----------------------------------------------------------------------


def _emit_report(settings: Settings, report: bench_module.Report) -> None:
    settings.emit(report.lines(), report.to_json())


@main.command(short_help="Measure a node: ops/s and latency under load.")
@click.option("--workload", type=click.Choice(bench_module.WORKLOADS), default="put",
              show_default=True, help="put, get, or a mix of both.")
@click.option("--concurrency", type=click.IntRange(1), default=64, show_default=True,
              metavar="N", help="Requests in flight (tasks, each one request at a time).")
@click.option("--value-size", type=click.IntRange(0), default=100, show_default=True,
              metavar="BYTES", help="Size of each value put.")
@click.option("--keys", "key_count", type=click.IntRange(1), default=10_000, show_default=True,
              metavar="N", help="Key space: keys bench/00000000 ... are picked at random.")
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=10.0,
              show_default=True, metavar="SECONDS", help="How long to send requests.")
@click.option("--read-fraction", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              metavar="F", help="For mixed: the share of gets.")
@click.option("--connections", type=click.IntRange(1), default=1, show_default=True,
              metavar="N", help="Clients (one connection each) the tasks share.")
@click.option("--preload/--no-preload", default=None,
              help="Write every key before measuring.  [default: on for get and mixed]")
@click.pass_obj
def bench(settings: Settings, workload: str, concurrency: int, value_size: int, key_count: int,
          duration: float, read_fraction: float, connections: int, preload: bool | None) -> None:
    """Measure a node: closed-loop load from this process, then ops/s and latency.

    Each of --concurrency tasks sends a request, waits for the answer and
    sends the next, until --duration has passed. Prints operations per
    second, errors by code, and p50/p99/p999/max latency in ms. Writes the
    keys bench/*: point it at a node whose data you can spare.

    \b
    kvctl --cluster 127.0.0.1:7600 bench --workload put --concurrency 64 --duration 10
    kvctl --json bench --workload mixed --read-fraction 0.9
    """
    plan = bench_module.Workload(
        name=workload,
        concurrency=concurrency,
        value_size_bytes=value_size,
        key_count=key_count,
        duration_seconds=duration,
        read_fraction=read_fraction,
        connections=connections,
        preload=workload != "put" if preload is None else preload,
    )
    report = run_with_clients(
        settings,
        connections,
        lambda clients: bench_module.run_workload(clients, plan, settings.cluster),
    )
    _emit_report(settings, report)


@main.command(name="bench-echo", short_help="The baseline: a bare trio echo server.")
@click.option("--concurrency", type=click.IntRange(1), default=64, show_default=True,
              metavar="N", help="Frames in flight (tasks, each one frame at a time).")
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=5.0,
              show_default=True, metavar="SECONDS", help="How long to send frames.")
@click.option("--connections", type=click.IntRange(1), default=1, show_default=True,
              metavar="N", help="Connections the tasks share.")
@click.option("--value-size", type=click.IntRange(0), default=100, show_default=True,
              metavar="BYTES", help="Frames are the size of a put of this many bytes.")
@click.pass_obj
def bench_echo(settings: Settings, concurrency: int, duration: float, connections: int,
               value_size: int) -> None:
    """The baseline: round trips through a bare trio echo server, no node.

    Starts an echo server on a random 127.0.0.1 port in this process and
    drives it like `bench` does a node, with frames encoded and decoded as
    the client does. Read `bench` figures against this one.
    """
    report = trio.run(bench_module.run_echo, concurrency, duration, connections, value_size)
    _emit_report(settings, report)


if __name__ == "__main__":
    main()
