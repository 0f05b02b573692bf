"""Docker's multiplexed attach stream and the capped capture."""

from __future__ import annotations

import struct

from agent_sandbox.engine.streams import STDERR, STDOUT, Capture, FrameDecoder


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


def test_capture_keeps_the_head_and_counts_everything() -> None:
    capture = Capture(cap=5)
    capture.add(b"abc")
    capture.add(b"defgh")
    capture.add(b"ij")
    assert capture.data == b"abcde"
    assert capture.seen == 10
    assert capture.truncated


def test_capture_under_the_cap_is_not_truncated() -> None:
    capture = Capture(cap=5)
    capture.add(b"abcde")
    assert not capture.truncated
