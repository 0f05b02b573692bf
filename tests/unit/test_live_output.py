"""A run's output as it is printed: the newest bytes of each stream within a cap, the last lines
of each, and what is new since a reader last looked. Pure logic."""

from __future__ import annotations

from agent_sandbox.engine.base import LIMITS, STDERR, STDOUT
from agent_sandbox.live_output import LiveOutput


def test_each_tail_keeps_the_newest_bytes_within_its_cap_and_counts_them_all() -> None:
    output = LiveOutput(tail_bytes=10)
    output.feed(STDOUT, b"0123456789")
    output.feed(STDOUT, b"abc")
    output.feed(STDERR, b"XY")
    so_far = output.so_far()
    assert so_far.stdout == "3456789abc"  # the newest 10 of 13
    assert so_far.stderr == "XY"
    assert (so_far.stdout_bytes, so_far.stderr_bytes, so_far.printed) == (13, 2, 15)
    # The interleaved tail has its own cap: the newest 10 bytes of both, in the order printed.
    text, printed = output.newest(0, max_chars=100)
    assert (text, printed) == ("56789abcXY", 15)


def test_a_chunk_larger_than_the_cap_leaves_only_its_end() -> None:
    output = LiveOutput(tail_bytes=4)
    output.feed(STDERR, b"abcdefgh")
    assert output.so_far().stderr == "efgh"
    assert output.so_far().stderr_bytes == 8


def test_so_far_gives_the_last_lines_of_each_stream() -> None:
    output = LiveOutput()
    for i in range(5):
        output.feed(STDOUT, f"out {i}\n".encode())
        output.feed(STDERR, f"err {i}\n".encode())
    output.feed(STDOUT, b"partial")  # a last line without its newline is a line too
    so_far = output.so_far(max_lines=2)
    assert so_far.stdout == "out 4\npartial"
    assert so_far.stderr == "err 3\nerr 4\n"
    assert (so_far.stdout_bytes, so_far.stderr_bytes) == (5 * 6 + 7, 5 * 6)


def test_so_far_of_nothing_printed_is_empty() -> None:
    so_far = LiveOutput().so_far()
    assert (so_far.stdout, so_far.stderr, so_far.printed) == ("", "", 0)


def test_newest_returns_only_what_came_after_since_and_the_next_since() -> None:
    output = LiveOutput()
    output.feed(STDOUT, b"a\n")
    output.feed(STDERR, b"b\n")
    text, seen = output.newest(0, max_chars=100)
    assert (text, seen) == ("a\nb\n", 4)
    assert output.newest(seen, max_chars=100) == ("", 4)  # nothing new
    output.feed(STDOUT, b"c\n")
    assert output.newest(seen, max_chars=100) == ("c\n", 6)


def test_newest_over_max_chars_starts_at_a_line_start() -> None:
    output = LiveOutput()
    output.feed(STDOUT, b"line1\nline2\nline3\n")
    text, printed = output.newest(0, max_chars=10)  # the last 10 are "e2\nline3\n"
    assert (text, printed) == ("line3\n", 18)


def test_newest_over_max_chars_without_a_line_break_keeps_the_last_chars() -> None:
    output = LiveOutput()
    output.feed(STDOUT, b"x" * 50 + b"END")
    text, _ = output.newest(0, max_chars=10)
    assert text == "x" * 7 + "END"


def test_newest_keeps_a_whole_line_when_the_cut_falls_at_its_start() -> None:
    output = LiveOutput()
    output.feed(STDOUT, b"aa\nbbbb\ncc\n")
    text, _ = output.newest(0, max_chars=8)  # the last 8 are exactly "bbbb\ncc\n"
    assert text == "bbbb\ncc\n"


def test_newest_since_older_than_the_tail_gives_the_whole_tail() -> None:
    output = LiveOutput(tail_bytes=6)
    output.feed(STDOUT, b"0123456789")
    assert output.newest(2, max_chars=100) == ("456789", 10)  # 8 are new, 6 were kept


def test_the_limits_reached_are_kept_apart_from_the_output() -> None:
    output = LiveOutput()
    output.feed(STDOUT, b"x\n")
    output.feed(LIMITS, b"processes,disk")
    so_far = output.so_far()
    assert so_far.limits_hit == ("processes", "disk")
    assert (so_far.stdout, so_far.stderr, so_far.printed) == ("x\n", "", 2)  # not output
    assert output.newest(0, max_chars=100) == ("x\n", 2)
    output.feed(LIMITS, b"processes,disk,memory")  # each time, all reached so far
    assert output.so_far().limits_hit == ("processes", "disk", "memory")
