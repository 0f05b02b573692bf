"""Docker's multiplexed attach stream and the capped capture."""

from __future__ import annotations

import struct

import pytest

from agent_sandbox.engine.base import STDERR, STDOUT
from agent_sandbox.engine.docker import FrameDecoder
from agent_sandbox.engine.protocol import END_PREFIX, INSTALLED_PREFIX, EndOfJob, InstallDone
from agent_sandbox.engine.session import Capture


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def test_frames_split_across_chunks_are_reassembled() -> None:
    wire = frame(STDOUT, b"hello ") + frame(STDERR, b"oops") + frame(STDOUT, b"world")
    decoder = FrameDecoder()
    frames = []
    for i in range(0, len(wire), 3):
        frames += decoder.feed(wire[i : i + 3])
    assert frames == [(STDOUT, b"hello "), (STDERR, b"oops"), (STDOUT, b"world")]


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(STDOUT, b"abc")[:-1]) == []
    assert decoder.feed(b"c") == [(STDOUT, b"abc")]


def test_capture_keeps_the_start_and_the_end_and_says_what_was_cut() -> None:
    capture = Capture(cap=8)
    for piece in (b"abc", b"defgh", b"ijklmnop", b"qrstuvwxyz"):
        capture.add(piece)
    assert capture.seen == 26
    assert capture.truncated
    assert capture.data == b"abcdef\n[agent-sandbox: 18 bytes cut here]\nyz"


def test_capture_up_to_the_cap_is_kept_whole() -> None:
    capture = Capture(cap=8)
    capture.add(b"abcde")
    capture.add(b"fgh")
    assert not capture.truncated
    assert capture.data == b"abcdefgh"


NONCE = "0123abcd"
LINE = END_PREFIX + NONCE.encode() + b' {"exit_code": 3}\n'


def feed_all(end: EndOfJob, pieces: list[bytes]) -> bytes:
    return b"".join(end.feed(piece) for piece in pieces)


@pytest.mark.parametrize("split", [1, 2, 7, 19, 40, len(LINE) + 5])
def test_the_end_line_is_found_however_the_stream_is_split(split: int) -> None:
    wire = b"program output\n" + LINE + b"late grandchild output"
    end = EndOfJob(NONCE)
    program = feed_all(end, [wire[i : i + split] for i in range(0, len(wire), split)])
    assert program == b"program output\n"
    assert end.report == b'{"exit_code": 3}'


def test_a_line_with_another_nonce_is_program_output() -> None:
    forged = END_PREFIX + b'guessed {"exit_code": 0}\n'
    end = EndOfJob(NONCE)
    program = end.feed(forged) + end.flush()
    assert program == forged
    assert end.report is None


def test_bytes_held_back_as_a_possible_line_start_are_released_at_the_end() -> None:
    end = EndOfJob(NONCE)
    assert end.feed(b"abc\x00agent-sand") == b"abc"
    assert end.flush() == b"\x00agent-sand"
    assert end.report is None


def test_an_unfinished_end_line_has_no_report() -> None:
    end = EndOfJob(NONCE)
    assert end.feed(LINE[:-3]) == b""
    assert end.report is None


INSTALL_LINE = INSTALLED_PREFIX + NONCE.encode() + b' {"exit_code": 0}\n'


@pytest.mark.parametrize("split", [1, 3, 11, len(INSTALL_LINE), len(INSTALL_LINE) + 4])
def test_the_install_line_is_found_and_the_program_output_after_it_kept(split: int) -> None:
    """How DockerEngine._watch reads stdout: the install gate first, whatever follows it goes on."""
    wire = INSTALL_LINE + b"program says hi\n"
    gate = InstallDone(NONCE)
    program = b""
    for piece in (wire[i : i + split] for i in range(0, len(wire), split)):
        if gate.report is None:
            before = gate.feed(piece)
            program += before + (gate.rest if gate.report is not None else b"")
        else:
            program += piece
    assert gate.report == b'{"exit_code": 0}'
    assert program == b"program says hi\n"


def test_an_end_line_is_not_an_install_line() -> None:
    gate = InstallDone(NONCE)
    assert gate.feed(LINE) + gate.flush() == LINE
    assert gate.report is None
