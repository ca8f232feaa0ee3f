"""A reader for the small part of EDN that Jepsen histories use.

Theory of operation: Jepsen writes each event of a history as an EDN map,
and its text logs print operation values in EDN (`nil`, `3`, `[3 0]`,
`:timed-out`). This module turns one such text into Python values and
nothing more: maps become dicts, vectors and lists become lists, sets become
frozensets, keywords become `Keyword` (so `:ok` is never confused with the
string "ok"), `nil`/`true`/`false` become None/True/False, numbers become
int or float. Tagged literals, characters and metadata are not part of any
history we read and are refused with `EdnError`, like any other malformed
text: a history file comes from outside, so a bad one gets a typed error,
never a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class EdnError(ValueError):
    """The text is not EDN of the kind a Jepsen history holds."""


@dataclass(frozen=True, slots=True)
class Keyword:
    """An EDN keyword such as `:invoke`, held without its colon."""

    name: str

    def __str__(self) -> str:
        return ":" + self.name


_TOKEN_PATTERN = re.compile(
    r"""
    (?P<space>[\s,]+)
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<open>\#\{|[\[{(])
    | (?P<close>[\]})])
    | (?P<atom>[^\s,"\[\]{}()]+)
    """,
    re.VERBOSE | re.DOTALL,
)
_INTEGER_PATTERN = re.compile(r"[+-]?\d+N?")
_FLOAT_PATTERN = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?M?")
_STRING_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
_CLOSER_OF_OPENER = {"[": "]", "(": ")", "{": "}", "#{": "}"}


def parse_edn(text: str) -> object:
    """Parse one EDN value that makes up the whole of `text`."""
    tokens = _tokenize(text)
    if not tokens:
        raise EdnError("no value in the text")
    value, position = _parse_value(tokens, 0)
    if position != len(tokens):
        raise EdnError(f"unexpected text after the value: {tokens[position][1]!r}")
    return value


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    while position < len(text):
        match = _TOKEN_PATTERN.match(text, position)
        if match is None:
            raise EdnError(f"cannot read the text at column {position + 1}: {text[position:position + 20]!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _parse_value(tokens: list[tuple[str, str]], position: int) -> tuple[object, int]:
    if position >= len(tokens):
        raise EdnError("the text ends inside a value")
    kind, text = tokens[position]
    if kind == "string":
        return _parse_string(text), position + 1
    if kind == "atom":
        return _parse_atom(text), position + 1
    if kind == "close":
        raise EdnError(f"unexpected {text!r}")
    closer = _CLOSER_OF_OPENER[text]
    items = []
    position += 1
    while True:
        if position >= len(tokens):
            raise EdnError(f"{text!r} is never closed")
        next_kind, next_text = tokens[position]
        if next_kind == "close":
            if next_text != closer:
                raise EdnError(f"{text!r} closed by {next_text!r}")
            position += 1
            break
        item, position = _parse_value(tokens, position)
        items.append(item)
    if text == "{":
        if len(items) % 2:
            raise EdnError("a map has a key without a value")
        try:
            return dict(zip(items[0::2], items[1::2], strict=True)), position
        except TypeError as error:
            raise EdnError(f"a map key cannot be used as a key: {error}") from None
    if text == "#{":
        try:
            return frozenset(items), position
        except TypeError as error:
            raise EdnError(f"a set element cannot be hashed: {error}") from None
    return items, position


def _parse_string(text: str) -> str:
    body = text[1:-1]
    if "\\" not in body:
        return body
    characters = []
    index = 0
    while index < len(body):
        character = body[index]
        if character != "\\":
            characters.append(character)
            index += 1
            continue
        escaped = body[index + 1]
        if escaped == "u":
            digits = body[index + 2:index + 6]
            if len(digits) != 4:
                raise EdnError(f"bad unicode escape in {text!r}")
            try:
                characters.append(chr(int(digits, 16)))
            except ValueError:
                raise EdnError(f"bad unicode escape in {text!r}") from None
            index += 6
            continue
        if escaped not in _STRING_ESCAPES:
            raise EdnError(f"unknown escape \\{escaped} in {text!r}")
        characters.append(_STRING_ESCAPES[escaped])
        index += 2
    return "".join(characters)


def _parse_atom(text: str) -> object:
    if text == "nil":
        return None
    if text == "true":
        return True
    if text == "false":
        return False
    if text.startswith(":") and len(text) > 1:
        return Keyword(text[1:])
    if _INTEGER_PATTERN.fullmatch(text):
        return int(text.rstrip("N"))
    if _FLOAT_PATTERN.fullmatch(text):
        return float(text.rstrip("M"))
    raise EdnError(f"unsupported EDN form {text!r} (symbols, tags and characters are not history values)")
