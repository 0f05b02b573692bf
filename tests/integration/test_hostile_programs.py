"""The violation matrix: hostile programs, each hitting a limit or misbehaving on purpose.

For each: the result's fields and note are right, and the very next run works normally and in
normal time (the host stayed responsive). Every case runs cold and warm (see tests/conftest.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent_sandbox.config import GVISOR, FileSettings, LimitSettings, Settings, load_settings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.models import RunResult
from agent_sandbox.sandbox import Sandbox
from tests.helpers import (
    KUBERNETES,
    PROFILES,
    ROOT,
    SandboxFactory,
    cold_sandbox,
    kinds,
    profile_or_skip,
    skip_unless_offered,
    snippet,
)

pytestmark = pytest.mark.anyio

SMALL_FILES = FileSettings(max_file_kib=1024, max_total_kib=1024)  # fits any /work used here
NORMAL_RUN_S = 5.0  # a trivial run takes ~0.2 s cold here; far above that means the host suffers


@dataclass(frozen=True)
class Hostile:
    name: str
    code: str
    check: Callable[[RunResult], None]
    limits: dict[str, Any] = field(default_factory=dict)  # the sandbox's (and its pool's)
    timeout_s: float | None = None
    stdin: str | None = None
    # Where gVisor or Kubernetes differs, what holds there instead; the function's docstring says why.
    under_gvisor: Callable[[RunResult], None] | None = None
    under_kubernetes: Callable[[RunResult], None] | None = None


def timed_out_with_note(result: RunResult) -> None:
    assert result.timed_out
    assert result.exit_code == 137
    assert kinds(result) == {"timeout"}
    assert "was still running after" in result.notes[0]


def sleep_past_timeout(result: RunResult) -> None:
    timed_out_with_note(result)
    assert result.stdout == "step 0\nstep 1\nsleeping\n"  # printed before the kill: kept
    assert 2 <= result.duration_s < 6
    assert "timeout_s" in result.notes[0]


def memory_bomb(result: RunResult) -> None:
    assert result.oom_killed
    assert result.exit_code == 137
    assert not result.timed_out
    assert kinds(result) == {"memory"}
    assert result.violations[0].limit == "64 MiB"
    assert "/work" in result.notes[0]


def memory_bomb_in_child(result: RunResult) -> None:
    assert (result.exit_code, result.stdout) == (0, "child returned -9\n")
    assert [artifact.path for artifact in result.artifacts] == ["before.txt"]
    assert result.oom_killed
    assert kinds(result) == {"memory"}
    assert "in a child process" in result.violations[0].message


def memory_bomb_in_child_under_gvisor(result: RunResult) -> None:
    """gVisor's Sentry holds every process of the sandbox, so the host's OOM killer can only kill
    all of them: the program and the launcher die together (no files come back), and no one can
    tell which process used the memory."""
    assert (result.exit_code, result.stdout) == (137, "")
    assert result.artifacts == []  # the launcher that sends them back died with the rest
    assert result.oom_killed
    assert kinds(result) == {"memory"}
    assert "in a child process" not in result.violations[0].message


def fork_bomb(result: RunResult) -> None:
    assert not result.timed_out
    processes = [v for v in result.violations if v.kind == "processes"]
    assert processes, result.violations
    assert processes[0].limit == "32 processes and threads"


def fork_bomb_on_kubernetes(result: RunResult) -> None:
    """A pod cannot have a process limit of its own: the kubelet's podPidsLimit holds every pod
    (128 on the test cluster), limits.pids says so, and a run cannot ask for 32 (it is refused:
    tests/kubernetes/test_engine.py). The bomb stops at 128 instead."""
    assert not result.timed_out
    processes = [v for v in result.violations if v.kind == "processes"]
    assert processes, result.violations
    assert processes[0].limit == "128 processes and threads"


def thread_bomb(result: RunResult) -> None:
    assert result.exit_code == 1
    assert "can't start new thread" in result.stderr
    assert kinds(result) == {"processes"}


def measured(kind: str, limit: str, exit_code: int) -> Callable[[RunResult], None]:
    """A limit the program met and then caught (exit 0, it says so on stdout only) or met and
    left quietly (exit 1, nothing printed): the measurement reports it all the same."""

    def check(result: RunResult) -> None:
        assert result.exit_code == exit_code
        assert result.stderr == ""
        assert kinds(result) == {kind}
        assert result.violations[0].limit == limit
        assert ("caught the error itself" in result.notes[0]) is (exit_code == 0)

    return check


def maybe_seen_under_gvisor(exit_code: int) -> Callable[[RunResult], None]:
    def check(result: RunResult) -> None:
        """gVisor keeps no count of the tasks its RLIMIT_NPROC refused, and a thread bomb's
        threads end with it: one that catches the refusal and exits at once is seen only if one
        of the launcher's looks (50 ms apart) fell while it held them, and it wrote nothing to
        stderr. (A fork bomb's children outlive it and are always counted.)"""
        assert result.exit_code == exit_code
        assert result.stderr == ""
        assert kinds(result) <= {"processes"}
        assert all(v.limit == "32 processes and threads" for v in result.violations)

    return check


def catch_or_quit(attempt: str, exit_code: int) -> str:
    """``attempt`` (which runs into a limit) in a program that catches the error and exits
    ``exit_code`` without a word on stderr."""
    body = "\n".join("    " + line for line in attempt.splitlines())
    return f"import os, sys, time\ntry:\n{body}\nexcept OSError as exc:\n    print('caught', exc)\nsys.exit({exit_code})"


def flood(stream: str) -> Callable[[RunResult], None]:
    def check(result: RunResult) -> None:
        assert not result.timed_out
        assert kinds(result) == {"output"}
        assert "stopped after writing more than 1024 KiB" in result.violations[0].message
        kept = getattr(result, stream)
        assert kept.startswith("flood flood")
        assert re.search(r"\n\[agent-sandbox: \d+ bytes cut here\]\n", kept)
        assert getattr(result, f"{stream}_truncated")
        assert getattr(result, f"{stream}_bytes") > 1024 * 1024

    return check


def huge_line(result: RunResult) -> None:
    cut = 1024 * 1024 + 1 - 64 * 1024
    assert result.exit_code == 0
    expected = "y" * 48 * 1024 + f"\n[agent-sandbox: {cut} bytes cut here]\n" + "y" * (16 * 1024 - 1) + "\n"
    assert result.stdout == expected
    assert (result.stdout_truncated, result.stdout_bytes) == (True, 1024 * 1024 + 1)
    assert kinds(result) == {"output"}
    assert "only 64 KiB of each stream was kept" in result.violations[0].message


def large_writes_arrive_whole(result: RunResult) -> None:
    """Every byte is counted. Under gVisor, before the launcher relayed the program's output, a
    write into the container's pipe with less room than it needed came back short and Python
    dropped the rest: a third of these 8 MiB arrived."""
    assert result.exit_code == 0
    assert (result.stdout_truncated, result.stdout_bytes) == (True, 128 * 64 * 1024)
    assert kinds(result) == {"output"}


def binary_garbage(result: RunResult) -> None:
    assert result.exit_code == 0
    assert result.stdout.startswith("ok\ufffd\ufffd")
    assert result.stdout.endswith("end\n")
    assert result.violations == []


def disk_full(result: RunResult) -> None:
    assert result.exit_code == 1
    assert "No space left on device" in result.stderr
    assert kinds(result) == {"disk"}
    assert "/work holds 8 MiB" in result.notes[0] or "/tmp 8 MiB" in result.notes[0]


def file_too_large(result: RunResult) -> None:
    assert result.exit_code == 1
    assert "File too large" in result.stderr
    assert kinds(result) == {"file_size"}
    assert "1 MiB" in result.notes[0]


def child_sigxfsz(result: RunResult) -> None:
    assert result.exit_code == 153
    assert kinds(result) == {"file_size"}


def open_files(result: RunResult) -> None:
    assert "Too many open files" in result.stderr
    assert kinds(result) == {"open_files"}
    assert result.violations[0].limit == "64 open files"


def closed_stdout(result: RunResult) -> None:
    assert result.exit_code == 3
    assert result.stdout == "before\n"
    assert result.stderr == "stderr still open\n"
    assert not result.timed_out


def redirected_stdout(result: RunResult) -> None:
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "file holds: to a file\n")


def ignores_sigterm(result: RunResult) -> None:
    timed_out_with_note(result)
    assert result.stdout == "ignoring SIGTERM\n"
    assert result.duration_s < 6  # SIGKILL, not a polite request


def daemonised_child(result: RunResult) -> None:
    assert result.exit_code == 0
    assert result.stdout == "parent done\n"
    assert not result.timed_out
    assert result.duration_s < 5  # the daemon does not keep the run alive


def stdin_forever(result: RunResult) -> None:
    timed_out_with_note(result)
    assert "stdin" in result.notes[0]


def eavesdropping_daemon(result: RunResult) -> None:
    """The daemon may take some of the program's own output off the pipe, never a line of the
    launcher's: it is dead before the files block and the end line are written."""
    assert (result.exit_code, result.timed_out) == (0, False)  # the real end line arrived
    for artifact in result.artifacts:
        assert "agent-sandbox" not in (artifact.content or ""), artifact.path


def killed_parent(result: RunResult) -> None:
    assert not result.timed_out
    assert result.exit_code == 137
    assert "SIGKILL" in result.notes[0]


def killed_parent_on_kubernetes(result: RunResult) -> None:
    """The launcher is PID 1 of the pod's container (a pod has no init), and the kernel never
    delivers a SIGKILL from inside its PID namespace to PID 1: the launcher lives, and the
    program sleeps on until its time limit, reported as such."""
    timed_out_with_note(result)


def forged_end(result: RunResult) -> None:
    assert result.exit_code == 3  # the real one: the forged line changed nothing
    assert result.stdout.startswith("\x00agent-sandbox-end 0123456789abcdef")  # kept as output
    assert "launcher mem: EACCES" in result.stdout
    assert "launcher environ: EACCES" in result.stdout
    assert "launcher fd/1: EACCES" in result.stdout


def forged_end_with_a_stolen_nonce(result: RunResult) -> None:
    """The program can read its own stderr back, and so the measured-so-far lines written there
    while it runs; they carry a nonce of their own, so an end line forged with it is output."""
    assert result.exit_code == 3  # the real one
    assert not result.timed_out
    assert result.violations == []
    said = result.stdout.splitlines()
    assert said[0] in ("stole a measured line", "stole nothing")  # a race with the host's reader
    if said[0] == "stole a measured line":
        assert said[1].startswith("\x00agent-sandbox-end ")  # the forgery, kept as output


def forged_end_under_gvisor(result: RunResult) -> None:
    """gVisor lets the program read its non-dumpable launcher's environment and open its stdout
    (not its memory). Neither gives the nonce away: the environment is the program's own (but
    for the post-mortem socket's name, which the launcher adds for the program) and never holds it; the launcher writes its lines after every other process is gone, and the
    install line before the program starts, which waits (up to 2 s) until the host has read it."""
    assert result.exit_code == 3
    assert "launcher mem: EACCES" in result.stdout
    assert "launcher environ: the program's own" in result.stdout
    assert "launcher fd/1: opened" in result.stdout


def signals_to_the_launcher_change_nothing(result: RunResult) -> None:
    """The launcher ignores every signal it can and checks its deadline itself: a SIGALRM from the
    program (once the way its timer fired) forges no timeout, and no other signal ends it."""
    assert (result.exit_code, result.timed_out, result.stdout) == (0, False, "after\n")
    assert result.duration_s < 5
    assert result.violations == []
    assert result.notes == []


def signals_to_init_under_gvisor(result: RunResult) -> None:
    """The launcher ignores them all here too, but gVisor does not shield PID 1 (Docker's init)
    from a fault signal (SIGSEGV) sent by a process of its own namespace, as Linux does: init dies
    and the sandbox with it. The result says the launcher did not report, without blaming the
    program's exit code, and claims no timeout."""
    assert result.exit_code in (134, 135, 139)  # SIGABRT, SIGBUS or SIGSEGV: whichever came first
    assert (result.timed_out, result.violations) == (False, [])
    assert f"The sandbox ended with exit code {result.exit_code} (SIG" in result.notes[0]
    assert "before its launcher could report" in result.notes[0]


def stopped_launcher_on_kubernetes(result: RunResult) -> None:
    """SIGSTOP to PID 1 from inside its namespace is never delivered either (see
    killed_parent_on_kubernetes): nothing stops, and there is nothing to say."""
    assert (result.exit_code, result.timed_out, result.stdout) == (0, False, "after stop\n")
    assert result.violations == []
    assert result.notes == []


def stopped_launcher(result: RunResult) -> None:
    """SIGSTOP cannot be ignored: the host resumes the launcher once, at the time limit, and
    says so; nothing the program wrote is lost and no timeout is claimed."""
    assert (result.exit_code, result.timed_out, result.stdout) == (0, False, "after stop\n")
    assert result.violations == []
    assert "likely stopped its launcher (SIGSTOP" in result.notes[0]


def flushed_then_killed_everything(result: RunResult) -> None:
    """The program writes straight into the container's pipe: what it flushed is kept."""
    assert result.stdout == "before-kill\n"
    assert result.exit_code == 137
    assert "The program's own exit code is unknown and no files came back." in result.notes[0]
    assert "may be missing" not in result.notes[0]


def flushed_then_killed_everything_on_kubernetes(result: RunResult) -> None:
    """kill(-1) reaches every process but PID 1 (the launcher, here) and the caller: there is no
    one else, so the kill fails with ESRCH and the program ends with its traceback."""
    assert (result.exit_code, result.stdout) == (1, "before-kill\n")
    assert "ProcessLookupError" in result.stderr


def flushed_then_killed_everything_under_gvisor(result: RunResult) -> None:
    """Under gVisor the launcher relays the program's output (short writes, see
    large_writes_arrive_whole), so bytes not yet relayed die with it: the result says so. What
    did arrive is a start of what was written (print writes the text and its newline apart)."""
    assert "before-kill\n".startswith(result.stdout)
    assert result.exit_code == 137
    assert "output written just before may be missing" in result.notes[0]


def work_filled_to_its_size(result: RunResult) -> None:
    """/work, /tmp and /dev/shm fit in memory: filling /work is a full disk, not a memory kill,
    and what was written before comes back."""
    assert (result.exit_code, result.oom_killed) == (1, False)
    assert kinds(result) == {"disk"}
    first = result.artifacts[0]
    assert (first.path, first.content) == ("result.txt", "42")


def memory_kill_keeps_the_files(result: RunResult) -> None:
    """The program, not the launcher, is the OOM killer's first choice, so the files it wrote
    still come back after the kill."""
    assert (result.exit_code, result.oom_killed) == (137, True)
    assert kinds(result) == {"memory"}
    assert [(a.path, a.content, a.omitted is None) for a in result.artifacts] == [("result.txt", "42", True)]


def memory_kill_keeps_the_files_under_gvisor(result: RunResult) -> None:
    """gVisor's Sentry holds every process, so the OOM killer takes the whole sandbox (see
    memory_bomb_in_child_under_gvisor): no files, and the result says so."""
    assert (result.exit_code, result.oom_killed) == (137, True)
    assert kinds(result) == {"memory"}
    assert result.artifacts == []
    assert any("the whole sandbox was killed for memory" in note for note in result.notes)


def multiprocessing_works(result: RunResult) -> None:
    assert (result.exit_code, result.stdout) == (0, "queue 3\npool 25\n"), result.stderr


def orphans_are_reaped(result: RunResult) -> None:
    """Each `sleep 0 &` outlives its shell and goes to PID 1: Docker's init collects it at once; in
    a pod the launcher is PID 1 and collects the ended ones every 50 ms. No zombie keeps a slot."""
    assert (result.exit_code, result.stdout) == (0, "all started\n")
    assert result.violations == []


def limit_words_on_stderr_of_a_success(result: RunResult) -> None:
    assert (result.exit_code, result.stdout) == (0, "all good\n")
    assert result.violations == []
    assert result.notes == []


# Each limit the program can catch, met and caught (exit 0), and met and quietly left (exit 1).
FORKS = "kids = []\nwhile True:\n    kid = os.fork()\n    if kid == 0:\n        time.sleep(60)\n        os._exit(0)\n    kids.append(kid)"
THREADS = (
    "import threading\nwhile True:\n    try:\n"
    "        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    "    except RuntimeError as exc:\n        raise OSError(str(exc)) from exc"
)
FILL = "with open('{path}', 'wb') as f:\n    while True:\n        f.write(b'x' * 2**20)"
BIG_FILE = "with open('big.bin', 'wb') as f:\n    f.write(b'x' * 2 * 2**20)"
OPEN_FILES = "files = []\ntry:\n    while True:\n        files.append(open('/dev/null'))\nfinally:\n    time.sleep(0.3)"
SMALL_DISKS = {"work_mib": 8, "tmp_mib": 16}
CAUGHT = [
    Hostile(
        f"{what}, {'caught' if code == 0 else 'quietly exiting 1'}",
        catch_or_quit(attempt, code),
        measured(kind, limit, code),
        limits,
        under_gvisor=maybe_seen_under_gvisor(code) if attempt is THREADS else None,
        under_kubernetes=measured(kind, "128 processes and threads", code) if kind == "processes" else None,
    )
    for what, attempt, kind, limit, limits in [
        ("a fork bomb", FORKS, "processes", "32 processes and threads", {"pids": 32}),
        ("a thread bomb", THREADS, "processes", "32 processes and threads", {"pids": 32}),
        ("filling /work", FILL.format(path="fill.bin"), "disk", "/work 8 MiB, /tmp 16 MiB", SMALL_DISKS),
        (
            "filling /tmp",
            FILL.format(path="/tmp/fill.bin"),
            "disk",
            "/work 16 MiB, /tmp 8 MiB",
            {"work_mib": 16, "tmp_mib": 8},
        ),
        ("a file past its size limit", BIG_FILE, "file_size", "1 MiB per file", {"file_size_mib": 1}),
        ("holding every file it may open", OPEN_FILES, "open_files", "64 open files", {"open_files": 64}),
    ]
    for code in (0, 1)
]

HOSTILE = [
    Hostile("infinite loop", "while True:\n    pass", timed_out_with_note, timeout_s=1.5),
    Hostile(
        "sleep past the timeout",
        "import time\nfor i in range(2):\n    print('step', i)\nprint('sleeping')\ntime.sleep(600)",
        sleep_past_timeout,
        timeout_s=2,
    ),
    Hostile(
        "memory bomb",
        "chunks = []\nwhile True:\n    chunks.append(b'x' * 2**20)",
        memory_bomb,
        {"memory_mib": 64},
    ),
    Hostile(
        "memory bomb in a child",
        "import subprocess, sys\n"
        "open('before.txt', 'w').write('written before the child ran')\n"
        "child = subprocess.run([sys.executable, '-c', 'x = b\"x\" * (200 * 2**20)'])\n"
        "print('child returned', child.returncode)",
        memory_bomb_in_child,
        {"memory_mib": 64},
        under_gvisor=memory_bomb_in_child_under_gvisor,
    ),
    Hostile(
        "fork bomb",
        "import os\nwhile True:\n    os.fork()",
        fork_bomb,
        {"pids": 32},
        timeout_s=20,
        under_kubernetes=fork_bomb_on_kubernetes,
    ),
    Hostile(
        "thread bomb",
        "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()",
        thread_bomb,
        {"pids": 32},
    ),
    Hostile(
        "stdout flood",
        "import sys\nwhile True:\n    sys.stdout.write('flood ' * 100 + '\\n')",
        flood("stdout"),
        {"output_capture_kib": 64, "output_kill_kib": 1024},
    ),
    Hostile(
        "stderr flood",
        "import sys\nwhile True:\n    sys.stderr.write('flood ' * 100 + '\\n')",
        flood("stderr"),
        {"output_capture_kib": 64, "output_kill_kib": 1024},
    ),
    Hostile(
        "a single huge line",
        "print('y' * (1024 * 1024))",
        huge_line,
        {"output_capture_kib": 64, "output_kill_kib": 4096},
    ),
    Hostile(
        "8 MiB in 64 KiB writes",
        "import sys\nfor _ in range(128):\n    sys.stdout.write('x' * 65535 + '\\n')",
        large_writes_arrive_whole,
        {"output_capture_kib": 64, "output_kill_kib": 16384},
    ),
    Hostile(
        "binary garbage on stdout",
        "import sys, os\nsys.stdout.buffer.write(b'ok\\xff\\xfe' + os.urandom(5000))\nprint('end')",
        binary_garbage,
    ),
    Hostile(
        "filling /work",
        "with open('fill.bin', 'wb') as f:\n    for _ in range(64):\n        f.write(b'x' * 2**20)",
        disk_full,
        {"work_mib": 8},
    ),
    Hostile(
        "filling /tmp",
        "with open('/tmp/fill.bin', 'wb') as f:\n    for _ in range(64):\n        f.write(b'x' * 2**20)",
        disk_full,
        {"tmp_mib": 8},
    ),
    Hostile(
        "exceeding the file-size limit",
        "with open('big.bin', 'wb') as f:\n    f.write(b'x' * 2 * 2**20)",
        file_too_large,
        {"file_size_mib": 1},
    ),
    Hostile(
        "a child killed by SIGXFSZ",
        "import subprocess, sys\n"
        "done = subprocess.run(['sh', '-c', 'head -c 3000000 /dev/zero > /tmp/big'])\n"
        "sys.exit(done.returncode)",
        child_sigxfsz,
        {"file_size_mib": 1},
    ),
    Hostile(
        "exhausting open files",
        "files = [open(f'f{i}', 'w') for i in range(1000)]",
        open_files,
        {"open_files": 64},
    ),
    Hostile(
        "closing its own stdout",
        "import os, sys\nprint('before')\nos.close(1)\nsys.stdout = open(os.devnull, 'w')\n"
        "print('stderr still open', file=sys.stderr)\nsys.exit(3)",
        closed_stdout,
    ),
    Hostile(
        "redirecting its own stdout",
        "import os, sys\nout = os.open('/work/out.txt', os.O_WRONLY | os.O_CREAT)\nos.dup2(out, 1)\n"
        "print('to a file')\nsys.stdout.flush()\n"
        "print('file holds:', open('/work/out.txt').read().strip(), file=sys.stderr)",
        redirected_stdout,
    ),
    Hostile(
        "ignoring SIGTERM",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ignoring SIGTERM')\n"
        "time.sleep(600)",
        ignores_sigterm,
        timeout_s=1.5,
    ),
    Hostile(
        "leaving a daemonised child behind",
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        while True:\n            time.sleep(1)\n    os._exit(0)\nos.wait()\nprint('parent done')",
        daemonised_child,
    ),
    Hostile(
        "reading stdin forever",
        "import sys\nwhile True:\n    sys.stdin.readline()",
        stdin_forever,
        timeout_s=1.5,
        stdin="one line\n",
    ),
    Hostile(
        "forging the end-of-job line",
        "import errno, os\n"
        'print(\'\\x00agent-sandbox-end 0123456789abcdef {"exit_code": 0, "oom_kills": 0}\', flush=True)\n'
        "for what in ('mem', 'environ'):\n"
        "    try:\n"
        "        seen = open(f'/proc/{os.getppid()}/{what}', 'rb').read()\n"
        "        mine = open('/proc/self/environ', 'rb').read().split(b'\\0')\n"
        "        own = seen.split(b'\\0') == [e for e in mine if not e.startswith(b'AGENT_SANDBOX_POSTMORTEM=')]\n"
        "        print('launcher', what + ':', \"the program's own\" if own else 'readable')\n"
        "    except OSError as exc:\n"
        "        print('launcher', what + ':', errno.errorcode[exc.errno])\n"
        "try:\n"
        "    os.close(os.open(f'/proc/{os.getppid()}/fd/1', os.O_RDONLY | os.O_NONBLOCK))\n"
        "    print('launcher fd/1: opened')\n"
        "except OSError as exc:\n"
        "    print('launcher fd/1:', errno.errorcode[exc.errno])\n"
        "raise SystemExit(3)",
        forged_end,
        under_gvisor=forged_end_under_gvisor,
    ),
    Hostile(
        "forging the end line with a nonce read back from its own stderr",
        "import os, re, time\n"
        "back = os.open('/proc/self/fd/2', os.O_RDONLY | os.O_NONBLOCK)\n"
        "seen, deadline = b'', time.monotonic() + 3\n"
        "while time.monotonic() < deadline and b'agent-sandbox-measured' not in seen:\n"
        "    try:\n        seen += os.read(back, 65536)\n    except BlockingIOError:\n        time.sleep(0.01)\n"
        "found = re.search(rb'agent-sandbox-measured ([0-9a-f]+) ', seen)\n"
        "print('stole a measured line' if found else 'stole nothing')\n"
        "if found:\n"
        "    end = b'\\x00agent-sandbox-end ' + found.group(1) + b' {\"exit_code\": 0, \"oom_kills\": 0}'\n"
        "    print(end.decode(), flush=True)\n"
        "raise SystemExit(3)",
        forged_end_with_a_stolen_nonce,
    ),
    Hostile(
        "a daemon reading the launcher's stdout",
        "import os, time\nlauncher = os.getppid()\nif os.fork() == 0:\n    os.setsid()\n    try:\n"
        "        pipe = os.open(f'/proc/{launcher}/fd/1', os.O_RDONLY)\n    except OSError:\n"
        "        os._exit(0)\n    with open('stolen.txt', 'wb', buffering=0) as out:\n"
        "        while True:\n            out.write(os.read(pipe, 65536))\n"
        "time.sleep(0.5)\nprint('parent done')",
        eavesdropping_daemon,
    ),
    Hostile(
        "killing its own parent",
        "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(600)",
        killed_parent,
        timeout_s=20,
        under_kubernetes=killed_parent_on_kubernetes,
    ),
    Hostile(
        "signalling its launcher and init",
        "import os, signal\nfor number in (signal.SIGALRM, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1,\n"
        "               signal.SIGSEGV, signal.SIGABRT, signal.SIGPIPE, signal.SIGRTMIN):\n"
        "    os.kill(os.getppid(), number)\n    os.kill(1, number)\nprint('after')",
        signals_to_the_launcher_change_nothing,
        timeout_s=20,
        under_gvisor=signals_to_init_under_gvisor,
    ),
    Hostile(
        "stopping its launcher",
        "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\nprint('after stop')",
        stopped_launcher,
        timeout_s=1,
        under_kubernetes=stopped_launcher_on_kubernetes,
    ),
    Hostile(
        "killing everything after a flush",
        "import os\nprint('before-kill', flush=True)\nos.kill(-1, 9)",
        flushed_then_killed_everything,
        under_gvisor=flushed_then_killed_everything_under_gvisor,
        under_kubernetes=flushed_then_killed_everything_on_kubernetes,
    ),
    Hostile(
        "filling /work to its configured size",
        "open('result.txt', 'w').write('42')\nwith open('fill.bin', 'wb') as f:\n    while True:\n"
        "        f.write(b'x' * 2**20)",
        work_filled_to_its_size,
        {"file_size_mib": 4096},
    ),
    Hostile(
        "files, then a memory kill",
        "open('result.txt', 'w').write('42')\nhog = []\nwhile True:\n    hog.append(b'x' * 2**20)",
        memory_kill_keeps_the_files,
        {"memory_mib": 128, "work_mib": 32, "tmp_mib": 16, "shm_mib": 8},
        under_gvisor=memory_kill_keeps_the_files_under_gvisor,
    ),
    Hostile(
        "multiprocessing",
        "import multiprocessing\nfrom concurrent.futures import ProcessPoolExecutor\nqueue = multiprocessing.Queue()\n"
        "queue.put(3)\nprint('queue', queue.get())\nwith ProcessPoolExecutor(2) as pool:\n"
        "    print('pool', sum(pool.map(abs, range(-5, 5))))",
        multiprocessing_works,
    ),
    Hostile(
        "limit words on the stderr of a success",
        "import sys\nsys.stderr.write('retrying upload: [Errno 28] No space left on device (remote bucket)\\n')\n"
        "sys.stderr.write('upstream said: [Errno 24] Too many open files\\n')\nprint('all good')",
        limit_words_on_stderr_of_a_success,
    ),
    Hostile(
        "orphaning more processes than its limit, one after another",
        "import subprocess\nfor _ in range(100):\n    subprocess.run(['sh', '-c', 'sleep 0 &'], check=True)\n"
        "print('all started')",
        orphans_are_reaped,
        {"pids": 32},
    ),
    *CAUGHT,
]


async def assert_next_run_is_normal(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = await sandbox.run(snippet("print('still fine')"))
    elapsed = time.monotonic() - started
    assert result.stdout == "still fine\n"
    assert result.violations == []
    assert elapsed < NORMAL_RUN_S, f"a trivial run took {elapsed:.1f} s right after"


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest, engine: DockerEngine) -> Settings:
    """Every case holds under the default profile (runc), the strict one (gVisor) and the
    default's sandboxes as pods on the Kubernetes test cluster."""
    return profile_or_skip(request, engine)


@pytest.mark.parametrize("case", HOSTILE, ids=[case.name for case in HOSTILE])
async def test_hostile_program(make_sandbox: SandboxFactory, profile: Settings, case: Hostile) -> None:
    check, limits = case.check, dict(case.limits)
    if profile.engine.runtime == GVISOR and case.under_gvisor:
        check = case.under_gvisor
    if profile.engine.backend == KUBERNETES:
        limits.pop("pids", None)  # the node's (see fork_bomb_on_kubernetes)
        check = case.under_kubernetes or check
    sandbox = await make_sandbox(LimitSettings(**limits), SMALL_FILES)
    asked = {"timeout_s": case.timeout_s} if case.timeout_s else {}
    result = await sandbox.run(snippet(case.code, stdin=case.stdin, limits=asked))
    assert result.warm_start is (sandbox.pool is not None)
    check(result)
    await assert_next_run_is_normal(sandbox)


async def test_output_flushed_before_the_program_kills_everything_is_kept_every_time(
    engine: DockerEngine,
) -> None:
    """It was lost in 6-9 of 20 runs while the launcher relayed output under runc too."""
    sandbox = cold_sandbox(engine)
    for _ in range(20):
        result = await sandbox.run(snippet("import os\nprint('before-kill', flush=True)\nos.kill(-1, 9)"))
        assert result.stdout == "before-kill\n"


async def test_a_traceback_after_a_flood_of_stderr_is_kept_and_read(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox(LimitSettings(output_capture_kib=64), SMALL_FILES)
    code = (
        "import os, sys\nfor _ in range(5000):\n    sys.stderr.write('log line ' * 10 + '\\n')\nopen('/nope')"
    )
    result = await sandbox.run(snippet(code))
    assert result.stderr_truncated
    assert "FileNotFoundError" in result.stderr.splitlines()[-1]


async def test_under_the_strict_profile_a_full_work_is_a_disk_violation(engine: DockerEngine) -> None:
    """/work is memory under both runtimes; the strict profile keeps memory_mib above /work and
    /tmp together, so filling /work to its real size (in files under the file-size limit) is
    reported as a full disk, not as a memory kill."""
    strict = load_settings(ROOT / "configs" / "strict.toml")
    skip_unless_offered(engine, strict.engine.runtime, "configs/strict.toml")
    files = strict.limits.work_mib // strict.limits.file_size_mib + 1
    code = (
        f"for n in range({files}):\n    with open(f'fill{{n}}.bin', 'wb') as f:\n"
        f"        for _ in range({strict.limits.file_size_mib}):\n            f.write(b'x' * 2**20)"
    )
    sandbox = Sandbox(
        strict.model_copy(update={"engine": strict.engine.model_copy(update={"pool_size": 0})}), engine
    )
    result = await sandbox.run(snippet(code))
    assert "No space left on device" in result.stderr
    assert not result.oom_killed
    assert kinds(result) == {"disk"}
    assert f"/work holds {strict.limits.work_mib} MiB" in result.notes[0]
