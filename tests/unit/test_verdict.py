"""From raw facts to violations and notes: each limit, its evidence, and its note."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent_sandbox.config import LimitSettings
from agent_sandbox.engine.spec import Measured, Outcome, PostMortem, Usage
from agent_sandbox.models import Limits, StoppedAt, ViolationKind
from agent_sandbox.verdict import Verdict, judge

LIMITS = Limits(**{name: getattr(LimitSettings(), name) for name in Limits.model_fields})
CLEAN = Outcome(
    exit_code=0,
    stdout=b"",
    stderr=b"",
    stdout_bytes=0,
    stderr_bytes=0,
    duration_s=0.1,
    timed_out=False,
    oom_killed=False,
    output_killed=False,
    stdout_truncated=False,
    stderr_truncated=False,
)


def kinds(outcome: Outcome, *, had_stdin: bool = False) -> list[ViolationKind]:
    verdict = judge(outcome, LIMITS, max_timeout_s=300, had_stdin=had_stdin)
    assert len(verdict.notes) >= len(verdict.violations)
    return [v.kind for v in verdict.violations]


def test_a_clean_run_has_no_violations_and_no_notes() -> None:
    verdict = judge(CLEAN, LIMITS, max_timeout_s=300, had_stdin=False)
    assert verdict.violations == []
    assert verdict.notes == []


def test_timeout_names_the_limit_and_how_to_get_more_time() -> None:
    verdict = judge(replace(CLEAN, timed_out=True, exit_code=137), LIMITS, max_timeout_s=300, had_stdin=False)
    assert [v.kind for v in verdict.violations] == [ViolationKind.TIMEOUT]
    assert verdict.violations[0].limit == "30 s"
    assert "timeout_s (at most 300 s)" in verdict.notes[0]


def test_timeout_at_the_maximum_does_not_suggest_more_time() -> None:
    limits = LIMITS.model_copy(update={"timeout_s": 300.0})
    verdict = judge(replace(CLEAN, timed_out=True), limits, max_timeout_s=300, had_stdin=False)
    assert "timeout_s" not in verdict.notes[0]


def test_oom_kill_is_a_memory_violation_that_mentions_tmpfs() -> None:
    verdict = judge(
        replace(CLEAN, oom_killed=True, exit_code=137), LIMITS, max_timeout_s=300, had_stdin=False
    )
    assert [v.kind for v in verdict.violations] == [ViolationKind.MEMORY]
    assert "1024 MiB" in verdict.notes[0]
    assert "/work" in verdict.notes[0]


def test_oom_kill_with_exit_zero_blames_a_child_process() -> None:
    verdict = judge(replace(CLEAN, oom_killed=True, exit_code=0), LIMITS, max_timeout_s=300, had_stdin=False)
    assert "in a child process" in verdict.violations[0].message


def test_output_kill_and_output_truncation_are_output_violations() -> None:
    flood = replace(
        CLEAN, output_killed=True, stdout=b"x" * 10, stdout_bytes=20_000_000, stdout_truncated=True
    )
    assert kinds(flood) == [ViolationKind.OUTPUT]
    truncated = replace(CLEAN, stdout=b"x" * 10, stdout_bytes=11, stdout_truncated=True)
    verdict = judge(truncated, LIMITS, max_timeout_s=300, had_stdin=False)
    assert [v.kind for v in verdict.violations] == [ViolationKind.OUTPUT]
    assert "only 1024 KiB of each stream was kept" in verdict.violations[0].message


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        (
            b"    os.fork()\nBlockingIOError: [Errno 11] Resource temporarily unavailable",
            ViolationKind.PROCESSES,
        ),
        (
            b"    self.pid = _fork_exec(\nBlockingIOError: [Errno 11] Resource temporarily unavailable",
            ViolationKind.PROCESSES,
        ),
        (b"RuntimeError: can't start new thread", ViolationKind.PROCESSES),
        (b"sh: 1: Cannot fork", ViolationKind.PROCESSES),
        (b"OSError: [Errno 28] No space left on device", ViolationKind.DISK),
        (b"OSError: [Errno 27] File too large", ViolationKind.FILE_SIZE),
        (b"OSError: [Errno 24] Too many open files: 'f1000'", ViolationKind.OPEN_FILES),
    ],
)
def test_errno_evidence_in_stderr_names_the_limit_and_says_likely(stderr: bytes, kind: ViolationKind) -> None:
    text = b"Traceback...\n" + stderr + b"\n"
    outcome = replace(CLEAN, exit_code=1, stderr=text, stderr_bytes=len(text))
    verdict = judge(outcome, LIMITS, max_timeout_s=300, had_stdin=False)
    assert [v.kind for v in verdict.violations] == [kind]
    assert "likely" in verdict.violations[0].message
    assert stderr.decode().splitlines()[-1][:30] in verdict.notes[0]


def test_eagain_from_a_socket_or_lock_is_not_a_process_limit() -> None:
    stderr = b"    sock.recv(10)\nBlockingIOError: [Errno 11] Resource temporarily unavailable\n"
    assert kinds(replace(CLEAN, exit_code=1, stderr=stderr, stderr_bytes=len(stderr))) == []


def test_an_unknown_exit_code_gets_a_note() -> None:
    verdict = judge(replace(CLEAN, exit_code=None), LIMITS, max_timeout_s=300, had_stdin=False)
    assert "exit code is unknown" in verdict.notes[0]


def test_sigxfsz_exit_of_a_child_is_a_file_size_violation() -> None:
    assert kinds(replace(CLEAN, exit_code=153)) == [ViolationKind.FILE_SIZE]


def test_several_limits_at_once_are_all_reported() -> None:
    outcome = replace(
        CLEAN, timed_out=True, exit_code=137, stderr=b"OSError: [Errno 24] Too many open files\n"
    )
    assert kinds(outcome) == [ViolationKind.TIMEOUT, ViolationKind.OPEN_FILES]


def test_reading_missing_stdin_gets_a_note() -> None:
    outcome = replace(CLEAN, exit_code=1, stderr=b"EOFError: EOF when reading a line\n")
    verdict = judge(outcome, LIMITS, max_timeout_s=300, had_stdin=False)
    assert any("stdin" in note for note in verdict.notes)
    with_stdin = judge(outcome, LIMITS, max_timeout_s=300, had_stdin=True)
    assert not any("`stdin`" in note for note in with_stdin.notes)


@pytest.mark.parametrize(("code", "words"), [(3, "exited with code 3"), (143, "SIGTERM")])
def test_a_failing_exit_without_a_limit_gets_a_plain_note(code: int, words: str) -> None:
    verdict = judge(replace(CLEAN, exit_code=code), LIMITS, max_timeout_s=300, had_stdin=False)
    assert verdict.violations == []
    assert words in verdict.notes[0]


def test_limit_words_in_the_stderr_of_a_program_that_succeeded_are_not_violations() -> None:
    """A program may log an errno it met elsewhere (a remote bucket, a retry) and go on to succeed."""
    stderr = (
        b"retrying upload: [Errno 28] No space left on device (remote bucket)\n"
        b"upstream said: [Errno 24] Too many open files\n"
        b"RuntimeError: can't start new thread (in the other service)\n"
    )
    outcome = replace(CLEAN, exit_code=0, stdout=b"all good\n", stderr=stderr, stderr_bytes=len(stderr))
    verdict = judge(outcome, LIMITS, max_timeout_s=300, had_stdin=False)
    assert verdict.violations == []
    assert verdict.notes == []
    assert kinds(replace(outcome, exit_code=1)) == [
        ViolationKind.PROCESSES, ViolationKind.DISK, ViolationKind.OPEN_FILES
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("relayed", "oom", "words", "absent"),
    [
        (False, False, "likely the program killed it", "may be missing"),
        (True, False, "output written just before may be missing", "killed for memory"),
        (True, True, "the whole sandbox was killed for memory", "likely the program"),
    ],
)
def test_a_lost_launcher_says_the_exit_code_is_the_sandboxs_and_no_files_came_back(
    relayed: bool, oom: bool, words: str, absent: str
) -> None:
    outcome = replace(CLEAN, exit_code=137, launcher_lost=True, output_relayed=relayed, oom_killed=oom)
    verdict = judge(outcome, LIMITS, max_timeout_s=300, had_stdin=False)
    note = verdict.notes[-1]
    assert "The sandbox ended with exit code 137 (SIGKILL) before its launcher could report" in note
    assert "The program's own exit code is unknown and no files came back" in note
    assert words in note
    assert absent not in note
    assert not any("The program was killed by SIGKILL" in n for n in verdict.notes)


@pytest.mark.parametrize("code", [125, 1, None])
def test_a_launcher_that_failed_on_its_own_is_not_blamed_on_the_program(code: int | None) -> None:
    verdict = judge(
        replace(CLEAN, exit_code=code, launcher_lost=True), LIMITS, max_timeout_s=300, had_stdin=False
    )
    assert "agent-sandbox itself failed (stderr may say how), not the program" in verdict.notes[-1]
    assert "likely the program" not in verdict.notes[-1]


def test_a_launcher_resumed_at_the_time_limit_is_said_not_taken_for_a_timeout() -> None:
    verdict = judge(replace(CLEAN, launcher_resumed=True), LIMITS, max_timeout_s=300, had_stdin=False)
    assert verdict.violations == []
    assert "likely stopped its launcher (SIGSTOP" in verdict.notes[0]


# What the launcher measured counts whatever the program printed or how it exited.


@pytest.mark.parametrize("exit_code", [0, 1])
@pytest.mark.parametrize(
    ("measured", "kind", "words"),
    [
        (Measured(forks_refused=3), ViolationKind.PROCESSES, "refused 3 attempts"),
        (Measured(tasks_peak=128), ViolationKind.PROCESSES, "seen holding all 128 of its 128"),
        (Measured(full=("/tmp",)), ViolationKind.DISK, "/tmp filled up"),
        (Measured(at_file_size=("/work/big.bin",)), ViolationKind.FILE_SIZE, "/work/big.bin"),
        (Measured(open_files_peak=1024), ViolationKind.OPEN_FILES, "held 1024 files open"),
    ],
)
def test_a_measured_limit_is_a_violation_even_when_the_program_caught_it_and_said_nothing(
    measured: Measured, kind: ViolationKind, words: str, exit_code: int
) -> None:
    verdict = judge(
        replace(CLEAN, exit_code=exit_code, measured=measured), LIMITS, max_timeout_s=300, had_stdin=False
    )
    assert [v.kind for v in verdict.violations] == [kind]
    assert "likely" not in verdict.violations[0].message
    assert words in verdict.notes[0]
    assert ("caught the error itself" in verdict.notes[0]) is (exit_code == 0)


def test_tasks_seen_short_of_the_limit_are_no_violation() -> None:
    assert kinds(replace(CLEAN, measured=Measured(tasks_peak=127))) == []


def test_with_a_counter_that_saw_no_refusal_thread_errors_in_stderr_are_not_the_process_limit() -> None:
    """'can't start new thread' also comes from a thread stack that did not fit in memory."""
    stderr = b"RuntimeError: can't start new thread\n"
    outcome = replace(CLEAN, exit_code=1, stderr=stderr, measured=Measured(forks_refused=0))
    assert kinds(outcome) == []


def test_errno_28_on_the_stderr_of_a_success_with_room_left_is_no_violation() -> None:
    stderr = b"OSError: [Errno 28] No space left on device\n"
    outcome = replace(
        CLEAN, exit_code=0, stderr=stderr, measured=Measured(forks_refused=0, open_files_peak=5)
    )
    assert judge(outcome, LIMITS, max_timeout_s=300, had_stdin=False) == Verdict([], [])


def test_a_memory_kill_says_the_peak_and_whether_the_program_or_a_child_died() -> None:
    usage = Usage(peak_memory_bytes=1024 * 2**20, cpu_s=0.5, wall_s=1.0, source="cgroup")
    child = judge(
        replace(CLEAN, oom_killed=True, oom_victim="child", usage=usage),
        LIMITS,
        max_timeout_s=300,
        had_stdin=False,
    )
    assert "in a child process" in child.violations[0].message
    assert "the program itself went on" in child.notes[0]
    assert "peak: 1024 MiB" in child.notes[0]
    program = judge(
        replace(CLEAN, exit_code=137, oom_killed=True, oom_victim="program", usage=usage),
        LIMITS,
        max_timeout_s=300,
        had_stdin=False,
    )
    assert "child" not in program.notes[0]


def test_a_timeout_note_names_the_line_it_was_running_and_whether_it_computed_or_waited() -> None:
    stopped = StoppedAt(
        process="program",
        pid=9,
        file="/work/main.py",
        line=12,
        function="crunch",
        source="while x < n:",
        dump="",
    )
    usage = Usage(peak_memory_bytes=None, cpu_s=2.9, wall_s=3.0, source="cgroup")
    outcome = replace(CLEAN, exit_code=137, timed_out=True, usage=usage)
    note = judge(outcome, LIMITS, max_timeout_s=300, had_stdin=False, stopped=stopped).notes[0]
    assert "It was running /work/main.py line 12 (in crunch): `while x < n:`" in note
    assert "busy computing" in note
    waiting = replace(outcome, usage=replace(usage, cpu_s=0.01))
    assert "mostly waiting" in judge(waiting, LIMITS, max_timeout_s=300, had_stdin=False).notes[0]


def test_a_timeout_where_no_process_answered_says_the_place_is_unknown() -> None:
    outcome = replace(CLEAN, exit_code=137, timed_out=True, post_mortem=PostMortem((), {}))
    note = judge(outcome, LIMITS, max_timeout_s=300, had_stdin=False).notes[0]
    assert "Where it was is unknown" in note
