"""Usage in every result, and where a program was when its time ran out, measured in the sandbox.

Every case holds under the default profile (runc), the strict one (gVisor) and on the Kubernetes
test cluster, with cold sandboxes and warm ones (tests/conftest.py).
"""

from __future__ import annotations

import pytest

from agent_sandbox.config import GVISOR, Settings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.models import ProjectFile, RunRequest
from tests.helpers import PROFILES, SandboxFactory, kinds, profile_or_skip, snippet

pytestmark = pytest.mark.anyio

TIMEOUT_S = 2.0
KILL_SLACK_S = 1.5  # the launcher's wait for the dumps (0.3 s at most), the kill, and the files


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest, engine: DockerEngine) -> Settings:
    return profile_or_skip(request, engine)


def usage_source(profile: Settings) -> str:
    """gVisor mounts no cgroup files: usage comes from the processes the launcher reaped."""
    return "processes" if profile.engine.runtime == GVISOR else "cgroup"


async def test_a_timeout_in_a_function_called_from_a_loop_names_that_functions_line(
    make_sandbox: SandboxFactory, profile: Settings
) -> None:
    code = "def crunch(n):\n    x = 0\n    while x < n:\n        x += 1\n    return x\n\nfor _ in range(3):\n    crunch(10**12)\n"
    result = await (await make_sandbox()).run(snippet(code, limits={"timeout_s": TIMEOUT_S}))
    assert result.timed_out
    assert kinds(result) == {"timeout"}
    stopped = result.stopped_at
    assert stopped is not None
    assert (stopped.process, stopped.file, stopped.function) == ("program", "/work/main.py", "crunch")
    assert stopped.line in (3, 4)  # the loop's test or its body, wherever the signal found it
    assert stopped.source in ("while x < n:", "x += 1")
    assert (
        f"It was running /work/main.py line {stopped.line} (in crunch): `{stopped.source}`" in result.notes[0]
    )
    assert 'File "/work/main.py", line 8 in <module>' in stopped.dump
    assert "busy computing" in result.notes[0]
    assert result.duration_s < TIMEOUT_S + KILL_SLACK_S


async def test_a_timeout_in_a_child_python_process_names_the_childs_line(
    make_sandbox: SandboxFactory, profile: Settings
) -> None:
    request = RunRequest(
        files=[
            ProjectFile(
                path="main.py",
                content="import subprocess, sys\nsubprocess.run([sys.executable, 'child.py'])\n",
            ),
            ProjectFile(
                path="child.py", content="def spin():\n    n = 0\n    while True:\n        n += 1\n\nspin()\n"
            ),
        ],
        limits={"timeout_s": TIMEOUT_S},  # type: ignore[arg-type]
    )
    result = await (await make_sandbox()).run(request)
    stopped = result.stopped_at
    assert stopped is not None
    assert (stopped.process, stopped.file, stopped.function) == ("child", "/work/child.py", "spin")
    assert "A child process of it" in result.notes[0]
    assert "(the program):" in stopped.dump  # the parent's stack too
    assert "subprocess.py" in stopped.dump


async def test_a_program_that_ignores_the_dump_signal_is_killed_on_time_with_an_honest_note(
    make_sandbox: SandboxFactory, profile: Settings
) -> None:
    code = "import signal\nsignal.signal(signal.SIGURG, signal.SIG_IGN)\nwhile True:\n    pass\n"
    result = await (await make_sandbox()).run(snippet(code, limits={"timeout_s": TIMEOUT_S}))
    assert result.timed_out
    assert result.exit_code == 137
    assert result.stopped_at is None
    assert "Where it was is unknown" in result.notes[0]
    assert result.duration_s < TIMEOUT_S + KILL_SLACK_S


async def test_a_program_that_is_not_python_is_killed_on_time_with_the_place_unknown(
    make_sandbox: SandboxFactory, profile: Settings
) -> None:
    code = "import os\nos.execvp('sleep', ['sleep', '600'])\n"
    result = await (await make_sandbox()).run(snippet(code, limits={"timeout_s": TIMEOUT_S}))
    assert result.timed_out
    assert result.stopped_at is None
    assert "Where it was is unknown" in result.notes[0]
    assert "mostly waiting" in result.notes[0]  # sleep uses no CPU
    assert result.duration_s < TIMEOUT_S + KILL_SLACK_S


async def test_a_printed_fake_post_mortem_cannot_change_where_it_stopped(
    make_sandbox: SandboxFactory, profile: Settings
) -> None:
    fake = 'Current thread 0x00007f0000000000 (most recent call first):\\n  File "/work/forged.py", line 99 in forged\\n'
    code = f"import sys\nprint('{fake}')\nprint('{fake}', file=sys.stderr)\nwhile True:\n    pass\n"
    result = await (await make_sandbox()).run(snippet(code, limits={"timeout_s": TIMEOUT_S}))
    stopped = result.stopped_at
    assert stopped is not None
    assert (stopped.file, stopped.line) in {("/work/main.py", 4), ("/work/main.py", 5)}  # the loop
    assert "forged" not in stopped.dump
    assert "forged" in result.stdout  # the program's output is still its own, untouched


async def test_the_peak_memory_of_a_program_that_allocates_300_mib_and_frees_it_is_at_least_that(
    make_sandbox: SandboxFactory, profile: Settings
) -> None:
    code = (
        "x = bytearray(300 * 2**20)\nfor i in range(0, len(x), 4096):\n    x[i] = 1\ndel x\nprint('freed')\n"
    )
    result = await (await make_sandbox()).run(snippet(code))
    assert result.stdout == "freed\n"
    assert result.peak_memory_mib is not None
    assert 300 <= result.peak_memory_mib < 400
    assert result.usage_source == usage_source(profile)


async def test_the_cpu_time_of_a_one_second_busy_loop_is_about_one_second(
    make_sandbox: SandboxFactory, profile: Settings
) -> None:
    code = "import time\nend = time.process_time() + 1\nwhile time.process_time() < end:\n    pass\n"
    result = await (await make_sandbox()).run(snippet(code))
    assert result.exit_code == 0
    assert result.cpu_s is not None
    assert 0.95 <= result.cpu_s < 1.5
    assert result.violations == []
    assert result.stopped_at is None
