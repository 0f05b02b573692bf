"""Raw facts of a run -> the limits it hit, and notes a language model can act on. Pure."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from agent_sandbox.engine.spec import InstallOutcome, Outcome
from agent_sandbox.models import ErrorInfo, Limits, StoppedAt, Violation, ViolationKind

SIGXFSZ_EXIT = 128 + signal.SIGXFSZ

# Evidence in the program's stderr, from Python or from a shell/child process.
_PROCESSES = re.compile(
    r"can't start new thread|fork: (?:retry: )?Resource temporarily unavailable|Cannot fork"
)
# EAGAIN also comes from non-blocking sockets, pipes and locks: count it only after a fork.
_EAGAIN = re.compile(r"\[Errno 11\] Resource temporarily unavailable")
_FORK_CONTEXT = re.compile(r"fork|Popen|_execute_child|spawn|[Tt]hread|exec")
_CONTEXT_LINES = 4
_DISK = re.compile(r"\[Errno 28\] No space left on device|No space left on device")
_FILE_SIZE = re.compile(r"\[Errno 27\] File too large|File size limit exceeded")
_OPEN_FILES = re.compile(r"\[Errno 24\] Too many open files|Too many open files")
_EOF = re.compile(r"EOFError: EOF when reading a line")


@dataclass(frozen=True)
class Verdict:
    """What a run ran into, and what to tell the model."""

    violations: list[Violation]
    notes: list[str]


def judge(
    outcome: Outcome,
    limits: Limits,
    *,
    max_timeout_s: float,
    had_stdin: bool,
    error: ErrorInfo | None = None,
    stopped: StoppedAt | None = None,
) -> Verdict:
    """Name every limit ``outcome`` shows evidence of, most decisive first.

    What the launcher measured counts whatever the program printed or how it exited: the kernel's
    counters (time, memory, forks refused by the process limit), full filesystems, files stopped
    at the size limit, a process seen holding its limit of open files. Text in stderr counts only
    where nothing was measured and only for a program that did not exit 0 (one that printed
    "[Errno 28]" about a remote bucket and went on to succeed hit no limit of ours), and is then
    worded "likely"."""
    if outcome.install is not None and not (outcome.install.finished and outcome.install.exit_code == 0):
        return _install_failed(outcome, outcome.install, limits)
    stderr = outcome.stderr_text
    measured = outcome.measured
    violations: list[Violation] = []
    notes: list[str] = []

    def found(kind: ViolationKind, limit: str, message: str, note: str) -> None:
        violations.append(Violation(kind=kind, limit=limit, message=message))
        notes.append(note)

    if outcome.timed_out:
        more = (
            f"If the work really needs longer, pass a larger timeout_s (at most {max_timeout_s:g} s); "
            if limits.timeout_s < max_timeout_s
            else ""
        )
        found(
            ViolationKind.TIMEOUT,
            f"{limits.timeout_s:g} s",
            f"stopped after the {limits.timeout_s:g} s time limit",
            f"The program was still running after {limits.timeout_s:g} s and was stopped; the "
            f"output it printed before that is kept.{_where(outcome, stopped)}{_busy(outcome)} {more}"
            "otherwise look for an endless loop, a long sleep, or a read from stdin that never ends.",
        )
    if outcome.oom_killed:
        child = outcome.oom_victim == "child" or (outcome.oom_victim is None and outcome.exit_code == 0)
        who = " in a child process" if child else ""
        went_on = " (the program itself went on)" if outcome.oom_victim == "child" else ""
        found(
            ViolationKind.MEMORY,
            f"{limits.memory_mib} MiB",
            f"killed by the kernel for using more than {limits.memory_mib} MiB of memory{who}",
            f"The program was killed{who}{went_on} for using more than {limits.memory_mib} MiB of "
            f"memory{_peak(outcome)} (it gets no MemoryError: the kernel ends it). Files written "
            "under /work, /tmp and /dev/shm are kept in memory and count toward this limit too. "
            "Process data in smaller pieces, free large objects, or write less to disk.",
        )
    if outcome.output_killed:
        found(
            ViolationKind.OUTPUT,
            f"{limits.output_kill_kib} KiB",
            f"stopped after writing more than {limits.output_kill_kib} KiB of output",
            f"The program wrote more than {limits.output_kill_kib} KiB to stdout and stderr and was "
            "stopped. Print a summary instead of every item, or write large results to a file.",
        )
    elif outcome.stdout_truncated or outcome.stderr_truncated:
        found(
            ViolationKind.OUTPUT,
            f"{limits.output_capture_kib} KiB per stream",
            f"only {limits.output_capture_kib} KiB of each stream was kept (its start and its end)",
            f"The program wrote {outcome.stdout_bytes} bytes to stdout and {outcome.stderr_bytes} "
            f"to stderr; only {limits.output_capture_kib} KiB of each is kept, the start and the "
            "end, and a line marks what was cut. Print less, e.g. a summary.",
        )
    failed = outcome.exit_code != 0
    caught = " (the program caught the error itself)" if outcome.exit_code == 0 else ""
    processes_limit = f"{limits.pids} processes and threads"
    if measured.forks_refused:
        found(
            ViolationKind.PROCESSES,
            processes_limit,
            f"the kernel refused {measured.forks_refused} new processes or threads (the {limits.pids} limit)",
            f"The kernel refused {_times(measured.forks_refused)} to start a process or thread: the "
            f"run hit its limit of {processes_limit} together{caught}. Use fewer, e.g. a pool of 2 "
            "to 4 workers, and make sure finished ones are joined.",
        )
    elif measured.all_tasks_held(limits.pids):
        found(
            ViolationKind.PROCESSES,
            processes_limit,
            f"the sandbox was seen holding all {measured.tasks_peak} of its {processes_limit}",
            f"The sandbox was seen holding all {measured.tasks_peak} of its {processes_limit} at "
            f"once{caught}: starting one more fails with EAGAIN. Use fewer, e.g. a pool of 2 to 4 "
            "workers, and make sure finished ones are joined.",
        )
    elif (
        measured.forks_refused is None
        and failed
        and (line := _evidence(_PROCESSES, stderr) or _fork_eagain(stderr))
    ):
        found(
            ViolationKind.PROCESSES,
            processes_limit,
            f"could not start a process or thread (likely the {limits.pids} limit): {line}",
            f"The program could not start a new process or thread ({line!r}); it most likely hit "
            f"the limit of {processes_limit} together. Use fewer, e.g. a pool of 2 to 4 workers, "
            "and make sure finished ones are joined.",
        )
    disk_limit = f"/work {limits.work_mib} MiB, /tmp {limits.tmp_mib} MiB"
    sizes = f"/work holds {limits.work_mib} MiB, /tmp {limits.tmp_mib} MiB and /dev/shm {limits.shm_mib} MiB"
    if measured.full:
        full = " and ".join(measured.full)
        found(
            ViolationKind.DISK,
            disk_limit,
            f"{full} filled up to its size",
            f"{full} filled up{caught}: writes there failed with ENOSPC. {sizes}, and all count "
            "toward the memory limit. Write less, or delete files you no longer need.",
        )
    elif failed and (line := _evidence(_DISK, stderr)):
        found(
            ViolationKind.DISK,
            disk_limit,
            f"ran out of space (likely /work or /tmp): {line}",
            f"A write failed for lack of space ({line!r}): {sizes}, and all count toward the "
            "memory limit. Write less, or delete files you no longer need.",
        )
    file_size_limit = f"{limits.file_size_mib} MiB per file"
    if measured.at_file_size:
        files = ", ".join(measured.at_file_size)
        found(
            ViolationKind.FILE_SIZE,
            file_size_limit,
            f"a file stopped at the {limits.file_size_mib} MiB limit: {files}",
            f"A file stopped growing at the {limits.file_size_mib} MiB limit{caught}: {files}. "
            "Writes past it fail with EFBIG. Split the data over several smaller files, or write less.",
        )
    elif failed and ((line := _evidence(_FILE_SIZE, stderr)) or outcome.exit_code == SIGXFSZ_EXIT):
        evidence = line or f"exit code {SIGXFSZ_EXIT} (SIGXFSZ)"
        found(
            ViolationKind.FILE_SIZE,
            file_size_limit,
            f"a file grew past the {limits.file_size_mib} MiB limit (likely): {evidence}",
            f"A file could not grow past {limits.file_size_mib} MiB ({evidence!r}). Split the "
            "data over several smaller files, or write less.",
        )
    open_files_limit = f"{limits.open_files} open files"
    advice = "Close files when done, e.g. `with open(...) as f:`."
    if measured.open_files_held(limits.open_files):
        found(
            ViolationKind.OPEN_FILES,
            open_files_limit,
            f"a process held {measured.open_files_peak} files open, its limit",
            f"A process of the program held {measured.open_files_peak} files open, the limit"
            f"{caught}: opening one more fails with EMFILE. {advice}",
        )
    elif failed and (line := _evidence(_OPEN_FILES, stderr)):
        found(
            ViolationKind.OPEN_FILES,
            open_files_limit,
            f"too many open files (likely the {limits.open_files} limit): {line}",
            f"The program had too many files open at once ({line!r}; the limit is "
            f"{limits.open_files}). {advice}",
        )
    if not had_stdin and _evidence(_EOF, stderr):
        notes.append("The program read from stdin, but the call gave no stdin: pass it in `stdin`.")
    if outcome.launcher_lost:
        notes.append(_launcher_lost_note(outcome))
    elif outcome.exit_code is None:
        notes.append(
            "The engine did not report how the program ended, so its exit code is unknown; "
            "the output above is what it printed."
        )
    elif not violations and outcome.exit_code != 0:
        notes.append(_error_note(error) if error else _exit_note(outcome.exit_code))
    if outcome.launcher_resumed:
        notes.append(
            "The sandbox reported the program's end only when it was resumed at the time limit: "
            "the program likely stopped its launcher (SIGSTOP; it runs as the same user), so "
            "duration_s includes that wait. Do not signal other processes of the sandbox."
        )
    return Verdict(violations=violations, notes=notes)


def _times(count: int) -> str:
    return "one attempt" if count == 1 else f"{count} attempts"


def _where(outcome: Outcome, stopped: StoppedAt | None) -> str:
    """Where the program was at the kill, as a sentence (empty when no one asked)."""
    if stopped is None:
        if outcome.post_mortem is None:
            return ""
        return (
            " Where it was is unknown: no Python process of it answered the request for its "
            "stacks (one that blocks or handles SIGURG, or is not Python, cannot)."
        )
    who = "It" if stopped.process == "program" else f"A child process of it (pid {stopped.pid})"
    code = f": `{stopped.source}`" if stopped.source else ""
    place = f"{stopped.file} line {stopped.line} (in {stopped.function}){code}"
    outside = "" if (stopped.file or "").startswith("/work/") else ", outside the program's own files"
    return f" {who} was running {place}{outside}; stopped_at.dump has every thread's stack."


def _busy(outcome: Outcome) -> str:
    """Whether the time went on computing or on waiting, from the CPU it used."""
    usage = outcome.usage
    if usage is None or usage.cpu_s is None or not usage.wall_s:
        return ""
    waiting = usage.cpu_s < usage.wall_s / 4
    doing = "mostly waiting (a sleep, a lock, a child, or stdin)" if waiting else "busy computing"
    return f" It used {usage.cpu_s:.2f} s of CPU in {usage.wall_s:.2f} s: {doing}."


def _peak(outcome: Outcome) -> str:
    peak = outcome.usage.peak_memory_bytes if outcome.usage else None
    return f" (the run's peak: {peak / 2**20:.0f} MiB)" if peak else ""


def _launcher_lost_note(outcome: Outcome) -> str:
    """The launcher, which reports how the program ended and sends its files back, ended first:
    the exit code is the sandbox's, not necessarily the program's. Killed by a signal, it was
    most likely the program's doing; any other end is a fault of the sandbox's own."""
    code = "an unknown exit code" if outcome.exit_code is None else f"exit code {outcome.exit_code}"
    if outcome.exit_code is None or outcome.exit_code <= 128:
        return (
            f"The sandbox ended with {code} before its launcher could report: agent-sandbox "
            "itself failed (stderr may say how), not the program. No files came back; run it again."
        )
    code += f" ({_signal_name(outcome.exit_code - 128)})"
    if outcome.oom_killed:
        why, advice = "the whole sandbox was killed for memory", ""
    else:
        why = (
            "likely the program killed it: it runs as the same user and can signal it, e.g. with "
            "os.kill(-1, 9) or by killing its parent"
        )
        advice = " Signal only the processes the program started."
    missing = ", and output written just before may be missing" if outcome.output_relayed else ""
    return (
        f"The sandbox ended with {code} before its launcher could report ({why}). The program's "
        f"own exit code is unknown and no files came back{missing}.{advice}"
    )


def _install_failed(outcome: Outcome, install: InstallOutcome, limits: Limits) -> Verdict:
    """The requirements did not install, so the program never ran: say why."""
    if outcome.timed_out and not install.finished:
        return Verdict(
            violations=[
                Violation(
                    kind=ViolationKind.TIMEOUT,
                    limit=f"{install.timeout_s:g} s to install",
                    message=f"installing the requirements was stopped after {install.timeout_s:g} s",
                )
            ],
            notes=[
                f"Installing the requirements took longer than {install.timeout_s:g} s and was "
                "stopped, so the program did not run. Ask for fewer or smaller packages."
            ],
        )
    if outcome.oom_killed:
        return Verdict(
            violations=[
                Violation(
                    kind=ViolationKind.MEMORY,
                    limit=f"{limits.memory_mib} MiB",
                    message="the installer was killed for memory",
                )
            ],
            notes=[
                f"Installing the requirements ran out of the {limits.memory_mib} MiB of memory "
                "(installed packages are kept in memory too), so the program did not run. Ask for "
                "fewer or smaller packages."
            ],
        )
    if not install.finished:
        note = (
            "The sandbox stopped before the requirements were installed, so the program did not "
            "run; stderr may say why."
        )
    else:
        note = (
            f"Installing the requirements failed (installer exit code {install.exit_code}), so the "
            "program did not run; install.output has the installer's message."
        )
    return Verdict(violations=[], notes=[note])


def _evidence(pattern: re.Pattern[str], text: str) -> str:
    """The first line of ``text`` that matches, trimmed; empty if none."""
    for line in text.splitlines():
        if pattern.search(line):
            return line.strip()[:200]
    return ""


def _fork_eagain(text: str) -> str:
    """The first EAGAIN line whose traceback shows a fork or a thread start just before it."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        context = lines[max(0, index - _CONTEXT_LINES) : index]
        if _EAGAIN.search(line) and any(_FORK_CONTEXT.search(earlier) for earlier in context):
            return line.strip()[:200]
    return ""


def _error_note(error: ErrorInfo) -> str:
    where = f"{error.file} line {error.line}" + (f" (in {error.function})" if error.function else "")
    code = f": `{error.source}`" if error.source else ""
    message = f": {error.message}" if error.message else ""
    return (
        f"The program stopped on an uncaught {error.type}{message}, raised at {where}{code}. Fix "
        "that line or what feeds it; the full traceback is in stderr."
    )


def _exit_note(exit_code: int) -> str:
    if exit_code > 128:
        return f"The program was killed by {_signal_name(exit_code - 128)} (exit code {exit_code})."
    return f"The program exited with code {exit_code}; stderr has the details."


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
