"""Ordinary runs through the real engine: files in, output, stdin, arguments, exit codes."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from agent_sandbox.models import ProjectFile, RunRequest
from agent_sandbox.sandbox import Sandbox
from tests.helpers import snippet

pytestmark = pytest.mark.anyio


async def test_hello_world(sandbox: Sandbox) -> None:
    result = await sandbox.run(snippet("print('hello from the sandbox')"))
    assert result.exit_code == 0
    assert result.stdout == "hello from the sandbox\n"
    assert result.stderr == ""
    assert result.violations == []
    assert result.notes == []
    assert not result.timed_out
    assert not result.oom_killed
    assert not result.stdout_truncated
    assert result.limits.memory_mib == 1024
    assert 0 < result.duration_s < 10


async def test_nested_folders_unicode_names_binary_and_empty_files_arrive_intact(sandbox: Sandbox) -> None:
    binary = os.urandom(70_000) + bytes(range(256))
    main = """
import hashlib, os
from pkg.sub.mod import VALUE
print(VALUE)
print(open("données/naïve 名前.txt", encoding="utf-8").read())
print(hashlib.sha256(open("assets/blob.bin", "rb").read()).hexdigest())
print(os.path.getsize("empty.txt"))
print(sorted(os.listdir(".")))
"""
    files = [
        ProjectFile(path="main.py", content=main),
        ProjectFile(path="pkg/__init__.py", content=""),
        ProjectFile(path="pkg/sub/__init__.py", content=""),
        ProjectFile(path="pkg/sub/mod.py", content="VALUE = 'imported from pkg.sub.mod'"),
        ProjectFile(path="données/naïve 名前.txt", content="héllo wörld ✓"),
        ProjectFile(path="assets/blob.bin", content=base64.b64encode(binary).decode(), encoding="base64"),
        ProjectFile(path="empty.txt", content=""),
    ]
    result = await sandbox.run(RunRequest(files=files))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "imported from pkg.sub.mod",
        "héllo wörld ✓",
        hashlib.sha256(binary).hexdigest(),
        "0",
        "['assets', 'données', 'empty.txt', 'main.py', 'pkg']",
    ]


async def test_an_entrypoint_in_a_subfolder_runs_with_arguments(sandbox: Sandbox) -> None:
    files = [ProjectFile(path="app/cli.py", content="import sys, os; print(sys.argv, os.getcwd())")]
    result = await sandbox.run(
        RunRequest(files=files, entrypoint="app/cli.py", args=["--name", "two words", "ü"])
    )
    assert result.stdout == "['app/cli.py', '--name', 'two words', 'ü'] /work\n"


async def test_stdin_reaches_the_program_after_the_files(sandbox: Sandbox) -> None:
    code = "import sys\ndata = sys.stdin.read()\nprint(len(data), data.upper())"
    result = await sandbox.run(snippet(code, stdin="line one\nline two ✓\n"))
    assert result.stdout == "20 LINE ONE\nLINE TWO ✓\n\n"


async def test_large_stdin_is_delivered_whole(sandbox: Sandbox) -> None:
    data = "0123456789" * 500_000
    code = "import sys, hashlib\nprint(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
    result = await sandbox.run(snippet(code, stdin=data))
    assert result.stdout.strip() == hashlib.sha256(data.encode()).hexdigest()


async def test_stdin_read_late_and_larger_than_socket_buffers_arrives_whole(sandbox: Sandbox) -> None:
    data = os.urandom(3 * 2**20).hex()  # 6 MiB of text
    code = "import sys, time, hashlib\ntime.sleep(1.5)\nprint(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
    result = await sandbox.run(snippet(code, stdin=data))
    assert result.stdout.strip() == hashlib.sha256(data.encode()).hexdigest()


async def test_reading_stdin_to_the_end_gets_end_of_file_instead_of_hanging(sandbox: Sandbox) -> None:
    code = "import sys\nprint(repr(sys.stdin.read()))\nfor line in sys.stdin:\n    pass\nprint('no hang')"
    result = await sandbox.run(snippet(code, stdin="only this", limits={"timeout_s": 10}))
    assert not result.timed_out
    assert result.stdout == "'only this'\nno hang\n"


async def test_without_stdin_the_program_reads_end_of_file(sandbox: Sandbox) -> None:
    result = await sandbox.run(snippet("import sys\nprint(repr(sys.stdin.read()))\ninput()"))
    assert result.stdout == "''\n"
    assert result.exit_code == 1
    assert "EOFError" in result.stderr
    assert any("pass it in `stdin`" in note for note in result.notes)


@pytest.mark.parametrize(
    ("code", "exit_code", "note"),
    [
        ("import sys; sys.exit(3)", 3, "exited with code 3"),
        ("raise ValueError('boom')", 1, "uncaught ValueError: boom, raised at /work/main.py line 1"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 143, "SIGTERM"),
    ],
)
async def test_exit_codes_are_reported_with_a_note(
    sandbox: Sandbox, code: str, exit_code: int, note: str
) -> None:
    result = await sandbox.run(snippet(code))
    assert result.exit_code == exit_code
    assert result.violations == []
    assert note in result.notes[0]


async def test_a_traceback_stays_in_stderr(sandbox: Sandbox) -> None:
    result = await sandbox.run(snippet("print('ok')\nraise ValueError('boom')"))
    assert result.stdout == "ok\n"
    assert "Traceback" in result.stderr
    assert "ValueError: boom" in result.stderr


async def test_the_callers_environment_is_set_and_the_hosts_is_not(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_SECRET_TOKEN", "must-not-leak")
    code = "import os; print(os.environ.get('GREETING'), os.environ.get('HOST_SECRET_TOKEN'))"
    result = await sandbox.run(snippet(code, env={"GREETING": "hi there"}))
    assert result.stdout == "hi there None\n"


async def test_binary_output_is_decoded_with_replacement_not_a_crash(sandbox: Sandbox) -> None:
    code = "import sys, os\nsys.stdout.buffer.write(b'ok\\xff\\xfe' + os.urandom(5000))\nprint('end')"
    result = await sandbox.run(snippet(code))
    assert result.exit_code == 0
    assert result.stdout.startswith("ok\ufffd\ufffd")
    assert result.stdout.endswith("end\n")
