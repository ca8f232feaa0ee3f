"""How kvctl turns command-line text into bytes, and bytes into output.

Theory. Keys, values and row ids are bytes in the store; a command line
and a terminal hold text. The rules, in both directions:

- Input: a KEY, VALUE, ROW, prefix or range bound is UTF-8 text, or hex
  digits with the global `--hex`. A VALUE of `-` is read from stdin as raw
  bytes (with or without `--hex`). A ROW written as a decimal integer
  (`17`) names the row id that integer makes as 8 bytes big-endian: the id
  `table append` gives the row it adds at version 17. A row id made of
  digit characters is given with `--hex`.
- Output: bytes that are valid UTF-8 are printed as text; other bytes as
  `hex:` and their hex digits (human output) or `{"hex": "..."}` (JSON).
  With `--hex`, all bytes are printed as hex: bare digits for people,
  `{"hex": "..."}` in JSON, so a script never has to guess.
- Row ids: printable text is shown as text; an 8-byte id that is not
  printable text (every id `table append` makes) is shown as its integer,
  in JSON as a JSON number; any other id as hex, as above.
- Resume tokens (where a limited listing stopped) are opaque and always hex.
"""

from __future__ import annotations

import binascii

import click

APPENDED_ROW_ID_SIZE_BYTES = 8
HEX_MARKER = "hex:"


def text_to_bytes(text: str, hex_mode: bool, what: str) -> bytes:
    """Command-line text as bytes: UTF-8, or hex digits in hex mode."""
    if not hex_mode:
        return text.encode("utf-8", errors="surrogateescape")
    return hex_to_bytes(text, what)


def hex_to_bytes(text: str, what: str) -> bytes:
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        raise click.BadParameter(f"{text!r} is not hex digits (two per byte)", param_hint=what) from None


def row_id_to_bytes(text: str, hex_mode: bool) -> bytes:
    """A ROW argument: hex in hex mode, a decimal integer as 8 bytes big-endian, else UTF-8."""
    if hex_mode:
        return hex_to_bytes(text, "ROW")
    if text.isascii() and text.isdigit():
        number = int(text)
        if number >= 2 ** (8 * APPENDED_ROW_ID_SIZE_BYTES):
            raise click.BadParameter(f"{text} does not fit in 8 bytes", param_hint="ROW")
        return number.to_bytes(APPENDED_ROW_ID_SIZE_BYTES, "big")
    return text.encode("utf-8", errors="surrogateescape")


def bytes_for_people(data: bytes, hex_mode: bool) -> str:
    if hex_mode:
        return data.hex()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return HEX_MARKER + data.hex()


def bytes_for_json(data: bytes, hex_mode: bool) -> str | dict:
    if not hex_mode:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"hex": data.hex()}


def _printable_text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def row_id_for_people(row_id: bytes, hex_mode: bool) -> str:
    shown = row_id_for_json(row_id, hex_mode)
    if isinstance(shown, dict):
        return shown["hex"] if hex_mode else HEX_MARKER + shown["hex"]
    return str(shown)


def row_id_for_json(row_id: bytes, hex_mode: bool) -> str | int | dict:
    if hex_mode:
        return {"hex": row_id.hex()}
    text = _printable_text(row_id)
    if text is not None:
        return text
    if len(row_id) == APPENDED_ROW_ID_SIZE_BYTES:
        return int.from_bytes(row_id, "big")
    return {"hex": row_id.hex()}
