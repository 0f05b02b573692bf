"""Where a program was at its time limit, read from the stacks its processes dumped."""

from __future__ import annotations

from agent_sandbox.engine.spec import PostMortem, ProcessDump
from agent_sandbox.postmortem import MAX_DUMP_CHARS, stopped_at

# As faulthandler writes them (Python 3.11): the newest thread first, the main thread last.
PROGRAM_IN_A_LOOP = """Thread 0x00007f3c2a7fc640 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 320 in wait
  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap

Current thread 0x00007f3c2d9d4740 (most recent call first):
  File "/work/main.py", line 4 in crunch
  File "/work/main.py", line 8 in <module>
"""
PROGRAM_WAITING_FOR_A_CHILD = """Current thread 0x00007f3c2d9d4740 (most recent call first):
  File "/usr/lib/python3.11/subprocess.py", line 1955 in _try_wait
  File "/usr/lib/python3.11/subprocess.py", line 1997 in _wait
  File "/usr/lib/python3.11/subprocess.py", line 1262 in wait
  File "/work/main.py", line 3 in <module>
"""
CHILD_SPINNING = """Current thread 0x00007f0000000001 (most recent call first):
  File "/work/child.py", line 4 in spin
  File "/work/child.py", line 5 in <module>
"""
SOURCES = {"/work/main.py:4": "while x < n:", "/work/child.py:4": "n += 1", "/work/main.py:3": "run()"}


def test_the_innermost_frame_in_the_programs_files_of_its_main_thread_is_the_place() -> None:
    place = stopped_at(PostMortem((ProcessDump(9, True, PROGRAM_IN_A_LOOP),), SOURCES))
    assert place is not None
    assert (place.process, place.pid, place.file, place.line, place.function, place.source) == (
        "program",
        9,
        "/work/main.py",
        4,
        "crunch",
        "while x < n:",
    )
    assert place.dump.startswith("process 9 (the program):\nThread 0x")


def test_a_program_waiting_on_a_child_that_runs_its_code_points_at_the_child() -> None:
    dumps = (ProcessDump(9, True, PROGRAM_WAITING_FOR_A_CHILD), ProcessDump(12, False, CHILD_SPINNING))
    place = stopped_at(PostMortem(dumps, SOURCES))
    assert place is not None
    assert (place.process, place.pid, place.file, place.line, place.source) == (
        "child",
        12,
        "/work/child.py",
        4,
        "n += 1",
    )
    assert "process 12 (a child):" in place.dump


def test_a_program_waiting_in_a_library_alone_points_at_its_own_call() -> None:
    place = stopped_at(PostMortem((ProcessDump(9, True, PROGRAM_WAITING_FOR_A_CHILD),), SOURCES))
    assert place is not None
    assert (place.file, place.line, place.source) == ("/work/main.py", 3, "run()")


def test_no_answer_is_no_place_and_an_answer_without_frames_is_an_unknown_one() -> None:
    assert stopped_at(None) is None
    assert stopped_at(PostMortem((), {})) is None
    place = stopped_at(PostMortem((ProcessDump(9, True, "garbage\n"),), {}))
    assert place is not None
    assert (place.file, place.line, place.source) == (None, None, None)


def test_the_dump_is_capped() -> None:
    huge = "Current thread 0x1 (most recent call first):\n" + '  File "/work/a.py", line 1 in f\n' * 5000
    place = stopped_at(PostMortem((ProcessDump(9, True, huge),), {}))
    assert place is not None
    assert len(place.dump) <= MAX_DUMP_CHARS
    assert place.dump.endswith("cut here ...]")


def test_a_dump_the_program_forged_cannot_break_the_result_or_its_notes() -> None:
    """The dumps come from the program's own processes: a handler of its own can write anything."""
    forged = (
        "Current thread 0x1 (most recent call first):\n"
        f'  File "/work/a.py", line {"9" * 5000} in f\n'  # past int()'s digit limit: not a frame
        '  File "/work/b.py", line 3 in evil\x1b[2J\x07\n'
    )
    place = stopped_at(PostMortem((ProcessDump(9, True, forged),), {"/work/b.py:3": "x = 1\rrm -rf /"}))
    assert place is not None
    assert (place.file, place.line) == ("/work/b.py", 3)
    assert place.function == "evil\\x1b[2J\\x07"
    assert place.source == "x = 1\\x0drm -rf /"
    assert "\x1b" not in place.dump
