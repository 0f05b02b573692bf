"""A job session driven by hand, the way a backend drives it, with a clock the test moves: what
it sends, what it takes out of the output, when it says to resume or kill, and the outcome."""

from __future__ import annotations

import dataclasses
import json

import pytest

from agent_sandbox.engine.base import LIMITS, STDERR, STDOUT
from agent_sandbox.engine.protocol import END_PREFIX, FILES_PREFIX, MEASURED_PREFIX, PREVIEW_WAIT_S
from agent_sandbox.engine.session import DRAIN_S, LAUNCHER_GRACE_S, JobSession, drive
from agent_sandbox.engine.spec import ResultCaps
from tests.unit.test_container_options import SPEC

CAPS = ResultCaps(max_files=5, max_bytes=100, max_listed=5)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def session(clock: Clock, **changes: object) -> tuple[JobSession, str]:
    """A session for SPEC and the nonce it sent the launcher."""
    spec = dataclasses.replace(SPEC, results=CAPS, **changes)  # type: ignore[arg-type]
    started = JobSession(spec, clock=clock)
    size, _, rest = started.payload.partition(b"\n")
    job = json.loads(rest[: int(size)])
    return started, str(job["nonce"])


def end_line(nonce: str, exit_code: int = 0, oom_kills: int | None = 0) -> bytes:
    report = {"exit_code": exit_code, "oom_kills": oom_kills, "timed_out": False, "return_value": "42"}
    return END_PREFIX + nonce.encode() + b" " + json.dumps(report).encode() + b"\n"


def files_block(nonce: str) -> bytes:
    manifest = {"files": [{"path": "out.txt", "size": 2}], "omitted": [], "changed": 1, "refused": None}
    return FILES_PREFIX + nonce.encode() + b" " + json.dumps(manifest).encode() + b"\nok"


def test_the_payload_is_the_job_then_the_files_then_stdin() -> None:
    started, _ = session(Clock(), archive=b"TAR", stdin=b"IN")
    size, _, rest = started.payload.partition(b"\n")
    assert rest[int(size) :] == b"TARIN"


def test_output_files_and_the_end_line_become_the_outcome() -> None:
    clock = Clock()
    started, nonce = session(clock)
    started.feed(STDOUT, b"hello ")
    started.feed(STDERR, b"warning\n" + end_line(nonce, 3))
    assert not started.ended  # both streams must carry the end line
    clock.now += 0.5
    started.feed(STDOUT, b"world\n" + files_block(nonce) + end_line(nonce, 3) + b"a daemon's late line\n")
    assert started.ended
    assert started.due() is None
    outcome = started.outcome(lambda killed: (None, False))
    assert (outcome.stdout, outcome.stderr) == (b"hello world\n", b"warning\n")
    assert (outcome.exit_code, outcome.return_value, outcome.timed_out) == (3, "42", False)
    assert outcome.files is not None
    assert outcome.files.contents() == [("out.txt", b"ok")]
    assert outcome.duration_s == 0.5
    assert not outcome.launcher_lost


@pytest.mark.parametrize(("exit_code", "asked"), [(0, []), (1, []), (137, [False])])
def test_without_a_memory_kill_counter_the_engine_is_asked_only_after_a_sigkill(
    exit_code: int, asked: list[bool]
) -> None:
    """Under gVisor the launcher keeps no memory-kill counter, and asking the engine waits for the
    sandbox's end (about 120 ms there): only a SIGKILL can have been the OOM killer's."""
    started, nonce = session(Clock())
    for stream in (STDOUT, STDERR):
        started.feed(stream, end_line(nonce, exit_code, oom_kills=None))
    looked: list[bool] = []

    def final_state(look_for_oom: bool) -> tuple[int | None, bool]:
        looked.append(look_for_oom)
        return exit_code, True

    outcome = started.outcome(final_state)
    assert looked == asked
    assert outcome.oom_killed is (exit_code == 137)


def test_past_the_limit_a_launcher_is_resumed_once_then_the_sandbox_killed() -> None:
    clock = Clock()
    started, _ = session(clock)
    clock.now += SPEC.limits.timeout_s + LAUNCHER_GRACE_S + PREVIEW_WAIT_S - 0.1
    assert started.due() is None
    clock.now += 0.2
    assert started.due() == "resume"
    assert started.due() is None
    clock.now += LAUNCHER_GRACE_S
    assert started.due() == "kill"
    assert not started.done_reading
    clock.now += DRAIN_S
    assert started.done_reading
    asked = []

    def final_state(look_for_oom: bool) -> tuple[int | None, bool]:
        asked.append(look_for_oom)
        return 137, False

    outcome = started.outcome(final_state)
    assert (outcome.exit_code, outcome.timed_out, outcome.launcher_resumed) == (137, True, False)
    assert asked == [False]  # the host killed it: no memory kill to look for


def test_where_the_launcher_cannot_be_stopped_one_late_at_its_deadline_is_killed_at_once() -> None:
    clock = Clock()
    started = JobSession(dataclasses.replace(SPEC, results=CAPS), clock=clock, resumable=False)
    clock.now += SPEC.limits.timeout_s + LAUNCHER_GRACE_S + PREVIEW_WAIT_S + 0.1
    assert started.due() == "kill"
    clock.now += DRAIN_S
    outcome = started.outcome(lambda look_for_oom: (None, False))
    assert (outcome.timed_out, outcome.launcher_resumed) == (True, False)


def test_a_resumed_launcher_that_then_stops_the_program_for_time_reports_a_timeout_only() -> None:
    clock = Clock()
    started, nonce = session(clock)
    clock.now += SPEC.limits.timeout_s + LAUNCHER_GRACE_S + PREVIEW_WAIT_S
    assert started.due() == "resume"
    report = {"exit_code": 137, "oom_kills": 0, "timed_out": True, "return_value": None}
    line = END_PREFIX + nonce.encode() + b" " + json.dumps(report).encode() + b"\n"
    for stream in (STDOUT, STDERR):
        started.feed(stream, line)
    outcome = started.outcome(lambda look: (None, False))
    assert (outcome.timed_out, outcome.launcher_resumed) == (True, False)


def test_an_output_flood_that_comes_with_the_end_lines_is_still_killed() -> None:
    clock = Clock()
    started, nonce = session(clock)
    flood = b"x" * (SPEC.limits.output_kill_kib * 1024 + 1)
    chunks = [[(STDOUT, flood + end_line(nonce)), (STDERR, end_line(nonce))]]
    acted: list[str] = []
    drive(started, lambda: chunks.pop() if chunks else None, acted.append)
    assert acted == ["kill"]
    assert started.outcome(lambda look: (137, False)).output_killed


def test_a_launcher_that_reports_once_resumed_is_said_to_have_been_stopped() -> None:
    clock = Clock()
    started, nonce = session(clock)
    clock.now += SPEC.limits.timeout_s + LAUNCHER_GRACE_S + PREVIEW_WAIT_S
    assert started.due() == "resume"
    for stream in (STDOUT, STDERR):
        started.feed(stream, end_line(nonce))
    outcome = started.outcome(lambda killed: (None, False))
    assert (outcome.exit_code, outcome.timed_out, outcome.launcher_resumed) == (0, False, True)


def test_once_the_files_block_begins_the_launcher_gets_time_to_send_it() -> None:
    clock = Clock()
    started, nonce = session(clock)
    clock.now += SPEC.limits.timeout_s
    started.feed(STDOUT, files_block(nonce)[:-1])  # the manifest, then a byte of the file
    clock.now += LAUNCHER_GRACE_S + 1
    assert started.due() is None  # no resume: it is plainly running


def test_an_output_flood_is_killed_and_counted() -> None:
    started, _ = session(Clock())
    flood = b"x" * (SPEC.limits.output_kill_kib * 1024 + 1)
    started.feed(STDOUT, flood)
    assert started.due() == "kill"
    outcome = started.outcome(lambda killed: (137, False))
    assert outcome.output_killed
    assert outcome.stdout_bytes == len(flood)
    assert outcome.stdout_truncated


def test_no_end_report_means_the_engine_says_how_it_ended_and_the_launcher_was_lost() -> None:
    started, _ = session(Clock())
    started.feed(STDOUT, b"before-kill\n")
    asked = []

    def final_state(look_for_oom: bool) -> tuple[int | None, bool]:
        asked.append(look_for_oom)
        return 137, False

    outcome = started.outcome(final_state)
    assert asked == [True]  # nobody killed it that we know of: memory may have
    assert (outcome.exit_code, outcome.stdout, outcome.launcher_lost) == (137, b"before-kill\n", True)


def so_far_line(nonce: str, **measured: object) -> bytes:
    line = {"forks_refused": 0, "full": [], "at_file_size": [], "open_files_peak": 3, "tasks_peak": None}
    line |= {"oom_kills": 0, **measured}
    return MEASURED_PREFIX + nonce.encode() + b" " + json.dumps(line).encode() + b"\n"


def test_measurements_while_the_program_runs_are_taken_out_of_stderr_and_told_as_limits_reached() -> None:
    told: list[tuple[int, bytes]] = []
    spec = dataclasses.replace(SPEC, results=CAPS)
    started = JobSession(spec, lambda stream, data: told.append((stream, data)), clock=Clock())
    size, _, rest = started.payload.partition(b"\n")
    job = json.loads(rest[: int(size)])
    nonce = str(job["measured_nonce"])
    assert nonce != job["nonce"]  # the program can read these lines back: never the result's nonce
    forged = so_far_line("0" * 32, full=["/work"])  # nor can it know this one before it reads a line
    started.feed(STDERR, b"half a li" + so_far_line(nonce) + b"ne\n" + forged)
    started.feed(STDERR, so_far_line(nonce, full=["/work"])[:20])  # a line may come in pieces
    started.feed(STDERR, so_far_line(nonce, full=["/work"])[20:])
    started.feed(STDERR, so_far_line(nonce, full=["/work"], oom_kills=1))
    started.feed(STDERR, so_far_line(nonce, full=["/work"], oom_kills=1))
    limits = [data for stream, data in told if stream == LIMITS]
    assert limits == [b"disk", b"disk,memory"]  # told as each new one is reached, never twice
    program = b"".join(data for stream, data in told if stream == STDERR)
    assert (
        program == b"half a line\n" + forged
    )  # the program's bytes, whole and in order    started.feed(STDERR, so_far_line(nonce, full=["/work"])[20:])
    started.feed(STDERR, so_far_line(nonce, full=["/work"], oom_kills=1))
    started.feed(STDERR, so_far_line(nonce, full=["/work"], oom_kills=1))
