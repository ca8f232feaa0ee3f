"""The command-line byte rules (cli/encoding.py): what goes in comes back out."""

from __future__ import annotations

import click
import pytest

from cli.encoding import (
    bytes_for_json,
    bytes_for_people,
    row_id_for_json,
    row_id_for_people,
    row_id_to_bytes,
    text_to_bytes,
)


def test_an_integer_row_is_the_appended_id_and_prints_back_as_the_integer():
    row_id = row_id_to_bytes("17", hex_mode=False)
    assert row_id == (17).to_bytes(8, "big")
    assert row_id_for_json(row_id, hex_mode=False) == 17
    assert row_id_for_people(row_id, hex_mode=False) == "17"


def test_text_rows_stay_text_and_other_bytes_are_marked_hex():
    assert row_id_for_json(row_id_to_bytes("topic", False), False) == "topic"
    assert row_id_for_json(b"\x00\x01", False) == {"hex": "0001"}
    assert row_id_for_people(b"\x00\x01", False) == "hex:0001"
    assert row_id_for_json(b"topic", True) == {"hex": b"topic".hex()}


def test_values_are_text_when_utf8_and_hex_otherwise():
    assert bytes_for_json("héllo".encode(), False) == "héllo"
    assert bytes_for_json(b"\xff", False) == {"hex": "ff"}
    assert bytes_for_people(b"\xff", False) == "hex:ff"
    assert bytes_for_people(b"abc", True) == "616263"


def test_hex_input_is_checked():
    assert text_to_bytes("00ff", hex_mode=True, what="KEY") == b"\x00\xff"
    with pytest.raises(click.BadParameter):
        text_to_bytes("xyz", hex_mode=True, what="KEY")
    with pytest.raises(click.BadParameter):
        row_id_to_bytes(str(2**64), hex_mode=False)
