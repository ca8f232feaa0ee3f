"""Node addresses: `HOST:PORT`, `[IPv6]:PORT`, and comma-separated lists of them."""

from __future__ import annotations

# The embedded default: a node started with no configuration listens here,
# and clients given no address connect here.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7420
DEFAULT_ADDRESS = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_DATA_DIR = "kvsvr-data"


class AddressError(ValueError):
    pass


def parse_address(text: str) -> tuple[str, int]:
    """Split `HOST:PORT` (or `[V6]:PORT`) into host and port, or raise AddressError."""
    text = text.strip()
    host, separator, port_text = text.rpartition(":")
    if not separator or not host:
        raise AddressError(f"address {text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"address {text!r} has no valid port (0-65535)")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """`HOST:PORT`, with an IPv6 host in brackets: what parse_address reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address_list(text: str) -> list[tuple[str, int]]:
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise AddressError("no address given")
    return [parse_address(part) for part in parts]
