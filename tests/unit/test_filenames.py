"""Names a program chose, shown as UTF-8 and read back: distinct names stay distinct."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_sandbox.filenames import name_from_shown, shown_name


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"plain.txt", "plain.txt"),
        ("caf\u00e9".encode(), "caf\u00e9"),
        (b"a\xff.txt", "a\\xff.txt"),
        (b"a\xfe.txt", "a\\xfe.txt"),
        (b"a\\xff.txt", "a\\\\xff.txt"),  # a real backslash, then "xff"
        (b"a\\b", "a\\\\b"),
        (b"line\nbreak\ttab\x1b", "line\\x0abreak\\x09tab\\x1b"),  # one line, nothing for a terminal
        (b"caf\xc2\x9b", "caf\u009b"),  # a C1 control is valid UTF-8: left as it is
    ],
)
def test_bytes_that_are_not_utf8_and_backslashes_are_escaped(raw: bytes, shown: str) -> None:
    assert shown_name(os.fsdecode(raw)) == shown
    assert os.fsencode(name_from_shown(shown)) == raw


@given(st.binary(min_size=1, max_size=40).filter(lambda raw: b"\0" not in raw and b"/" not in raw))
def test_every_name_round_trips_and_shows_as_valid_utf8(raw: bytes) -> None:
    shown = shown_name(os.fsdecode(raw))
    shown.encode("utf-8")  # no lone surrogate is left
    assert not any(ord(char) < 0x20 for char in shown)  # one line
    assert os.fsencode(name_from_shown(shown)) == raw


@given(st.lists(st.binary(min_size=1, max_size=8), min_size=2, max_size=5, unique=True))
def test_distinct_names_never_show_alike(names: list[bytes]) -> None:
    assert len({shown_name(os.fsdecode(raw)) for raw in names}) == len(names)


@pytest.mark.parametrize("shown", ["a\\b", "a\\x41", "trailing\\", "a\\xFF", "a\\x7"])
def test_a_backslash_that_is_no_escape_is_refused_saying_how_names_are_listed(shown: str) -> None:
    with pytest.raises(ValueError, match="copy the name exactly as it was listed"):
        name_from_shown(shown)
