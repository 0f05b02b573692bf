"""Every limit, hit for real by a program, and reported as a violation with a note.

After each hostile program the next trivial run must work at once: the host stays responsive.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from agent_sandbox.config import FileSettings, LimitSettings
from agent_sandbox.models import RunResult
from agent_sandbox.sandbox import Sandbox
from tests.helpers import SandboxFactory, kinds, snippet

pytestmark = pytest.mark.anyio


SMALL_FILES = FileSettings(max_file_kib=1024, max_total_kib=1024)  # fits any /work used here


async def tight(make_sandbox: SandboxFactory, **limits: Any) -> Sandbox:
    """A sandbox whose configured limits (and so its warm pool's containers) are smaller."""
    return await make_sandbox(LimitSettings(**limits), SMALL_FILES)


def assert_warm_if_pooled(sandbox: Sandbox, result: RunResult) -> None:
    assert result.warm_start is (sandbox.pool is not None)


async def assert_next_run_is_normal(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = await sandbox.run(snippet("print('still fine')"))
    assert result.stdout == "still fine\n"
    assert result.violations == []
    assert time.monotonic() - started < 10, "the engine was slow to recover"


async def test_timeout_keeps_the_output_printed_before_the_kill(sandbox: Sandbox) -> None:
    code = "import time\nfor i in range(3):\n    print('step', i)\nprint('sleeping')\ntime.sleep(600)"
    result = await sandbox.run(snippet(code, limits={"timeout_s": 2}))
    assert result.timed_out
    assert result.exit_code == 137
    assert result.stdout == "step 0\nstep 1\nstep 2\nsleeping\n"
    assert kinds(result) == {"timeout"}
    assert result.violations[0].limit == "2 s"
    assert "timeout_s" in result.notes[0]
    assert 2 <= result.duration_s < 6
    await assert_next_run_is_normal(sandbox)


async def test_an_infinite_loop_is_stopped_at_the_timeout(sandbox: Sandbox) -> None:
    result = await sandbox.run(snippet("while True:\n    pass", limits={"timeout_s": 1.5}))
    assert result.timed_out
    assert kinds(result) == {"timeout"}


async def test_a_memory_bomb_is_oom_killed_and_reported(make_sandbox: SandboxFactory) -> None:
    sandbox = await tight(make_sandbox, memory_mib=64)
    code = "chunks = []\nwhile True:\n    chunks.append(b'x' * 2**20)"
    result = await sandbox.run(snippet(code))
    assert_warm_if_pooled(sandbox, result)
    assert result.oom_killed
    assert result.exit_code == 137
    assert not result.timed_out
    assert kinds(result) == {"memory"}
    assert result.violations[0].limit == "64 MiB"
    assert "/work" in result.notes[0]
    await assert_next_run_is_normal(sandbox)


async def test_a_memory_bomb_in_a_child_is_reported_even_when_the_parent_exits_0(
    make_sandbox: SandboxFactory,
) -> None:
    sandbox = await tight(make_sandbox, memory_mib=64)
    code = (
        "import subprocess, sys\n"
        "child = subprocess.run([sys.executable, '-c', 'x = b\"x\" * (200 * 2**20)'])\n"
        "print('child returned', child.returncode)"
    )
    result = await sandbox.run(snippet(code))
    assert_warm_if_pooled(sandbox, result)
    assert result.exit_code == 0
    assert result.stdout == "child returned -9\n"
    assert result.oom_killed
    assert kinds(result) == {"memory"}
    assert "in a child process" in result.violations[0].message


async def test_a_fork_bomb_returns_within_the_timeout_with_a_processes_violation(
    make_sandbox: SandboxFactory,
) -> None:
    sandbox = await tight(make_sandbox, pids=32)
    code = "import os\nwhile True:\n    os.fork()"
    result = await sandbox.run(snippet(code, limits={"timeout_s": 20}))
    assert_warm_if_pooled(sandbox, result)
    assert not result.timed_out
    processes = [v for v in result.violations if v.kind == "processes"]
    assert processes, result.violations
    assert processes[0].limit == "32 processes and threads"
    await assert_next_run_is_normal(sandbox)


async def test_a_thread_bomb_is_a_processes_violation(make_sandbox: SandboxFactory) -> None:
    sandbox = await tight(make_sandbox, pids=32)
    code = (
        "import threading, time\n"
        "while True:\n"
        "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()"
    )
    result = await sandbox.run(snippet(code))
    assert result.exit_code == 1
    assert "can't start new thread" in result.stderr
    assert kinds(result) == {"processes"}
    assert "likely" in result.violations[0].message


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
async def test_an_output_flood_is_stopped_and_its_head_kept(
    make_sandbox: SandboxFactory, stream: str
) -> None:
    sandbox = await tight(make_sandbox, output_capture_kib=64, output_kill_kib=1024)
    code = f"import sys\nwhile True:\n    sys.{stream}.write('flood ' * 100 + '\\n')"
    result = await sandbox.run(snippet(code))
    assert not result.timed_out
    assert kinds(result) == {"output"}
    assert "stopped" in result.violations[0].message
    kept = getattr(result, stream)
    assert kept.startswith("flood flood")
    assert re.search(r"\n\[agent-sandbox: \d+ bytes cut here\]\n", kept)
    assert kept.endswith("flood \n") or kept.endswith("flood")
    assert getattr(result, f"{stream}_truncated")
    assert getattr(result, f"{stream}_bytes") > 1024 * 1024
    await assert_next_run_is_normal(sandbox)


async def test_a_single_huge_line_is_truncated_not_lost(make_sandbox: SandboxFactory) -> None:
    sandbox = await tight(make_sandbox, output_capture_kib=64, output_kill_kib=4096)
    result = await sandbox.run(snippet("print('y' * (1024 * 1024))"))
    assert result.exit_code == 0
    cut = 1024 * 1024 + 1 - 64 * 1024
    assert (
        result.stdout
        == "y" * 48 * 1024 + f"\n[agent-sandbox: {cut} bytes cut here]\n" + "y" * (16 * 1024 - 1) + "\n"
    )
    assert result.stdout_truncated
    assert result.stdout_bytes == 1024 * 1024 + 1
    assert kinds(result) == {"output"}
    assert "only 64 KiB of each stream was kept" in result.violations[0].message


async def test_filling_work_is_a_disk_violation(make_sandbox: SandboxFactory) -> None:
    sandbox = await tight(make_sandbox, work_mib=8)
    code = "with open('fill.bin', 'wb') as f:\n    for _ in range(64):\n        f.write(b'x' * 2**20)"
    result = await sandbox.run(snippet(code))
    assert result.exit_code == 1
    assert "No space left on device" in result.stderr
    assert kinds(result) == {"disk"}
    await assert_next_run_is_normal(sandbox)


async def test_filling_tmp_is_a_disk_violation(make_sandbox: SandboxFactory) -> None:
    sandbox = await tight(make_sandbox, tmp_mib=8)
    code = "with open('/tmp/fill.bin', 'wb') as f:\n    for _ in range(64):\n        f.write(b'x' * 2**20)"
    result = await sandbox.run(snippet(code))
    assert kinds(result) == {"disk"}


async def test_a_file_over_the_size_limit_is_a_file_size_violation(make_sandbox: SandboxFactory) -> None:
    sandbox = await tight(make_sandbox, file_size_mib=1)
    code = "with open('big.bin', 'wb') as f:\n    f.write(b'x' * 2 * 2**20)"
    result = await sandbox.run(snippet(code))
    assert result.exit_code == 1
    assert "File too large" in result.stderr
    assert kinds(result) == {"file_size"}


async def test_a_child_killed_by_sigxfsz_is_a_file_size_violation(make_sandbox: SandboxFactory) -> None:
    sandbox = await tight(make_sandbox, file_size_mib=1)
    code = (
        "import subprocess, sys\n"
        "done = subprocess.run(['sh', '-c', 'head -c 3000000 /dev/zero > /tmp/big'])\n"
        "sys.exit(done.returncode)"
    )
    result = await sandbox.run(snippet(code))
    assert result.exit_code == 153
    assert kinds(result) == {"file_size"}


async def test_exhausting_open_files_is_an_open_files_violation(make_sandbox: SandboxFactory) -> None:
    sandbox = await tight(make_sandbox, open_files=64)
    code = "files = [open(f'f{i}', 'w') for i in range(1000)]"
    result = await sandbox.run(snippet(code))
    assert "Too many open files" in result.stderr
    assert kinds(result) == {"open_files"}
    assert result.violations[0].limit == "64 open files"


async def test_a_program_reading_stdin_to_the_end_gets_end_of_file_instead_of_hanging(
    sandbox: Sandbox,
) -> None:
    code = "import sys\nprint(repr(sys.stdin.read()))\nfor line in sys.stdin:\n    pass\nprint('no hang')"
    result = await sandbox.run(snippet(code, stdin="only this", limits={"timeout_s": 10}))
    assert not result.timed_out
    assert result.stdout == "'only this'\nno hang\n"


async def test_a_traceback_after_a_flood_of_stderr_is_kept_and_read(make_sandbox: SandboxFactory) -> None:
    sandbox = await tight(make_sandbox, output_capture_kib=64)
    code = "import os, sys\nfor _ in range(5000):\n    sys.stderr.write('log line ' * 10 + '\\n')\nos.open('/nope', os.O_RDONLY)"
    result = await sandbox.run(snippet(code))
    assert result.stderr_truncated
    assert "FileNotFoundError" in result.stderr.splitlines()[-1]
