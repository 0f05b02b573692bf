"""The warm pool: one job per sandbox, nothing shared between jobs, nothing left behind, on each
backend (Docker containers, Kubernetes pods)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import anyio
import pytest

from agent_sandbox.config import GVISOR
from agent_sandbox.models import ProjectFile
from agent_sandbox.sandbox import Sandbox
from tests.conftest import backend_named
from tests.helpers import KUBERNETES, OCI, Backend, snippet, stdio_server

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[2]

FIRST_JOB = """
import os, subprocess
open("/work/secret.txt", "w").write("job one")
open("/tmp/secret", "w").write("job one")
subprocess.Popen(["sleep", "300"], start_new_session=True)  # a daemon left behind
print(os.environ["JOB_SECRET"])
"""
SECOND_JOB = """
import json, os
processes = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        processes.append(open(f"/proc/{pid}/cmdline").read().replace("\\0", " ").strip())
    except OSError:
        pass
print(json.dumps({
    "work": sorted(os.listdir("/work")),
    "tmp": sorted(os.listdir("/tmp")),
    "env": os.environ.get("JOB_SECRET"),
    "sleepers": [p for p in processes if p.startswith("sleep")],
}))
"""


# What a cell sees of how it was started: the same whether its runner was started with the
# sandbox, before the job came (warm), or for the job.
HOW_STARTED = """
import json, os, resource, subprocess, sys
print(json.dumps({
    "env": os.environ.get("JOB_VAR"),
    "child_env": subprocess.run(["sh", "-c", "echo $JOB_VAR"], capture_output=True, text=True).stdout,
    "hash_randomization": sys.flags.hash_randomization,
    "user_site": [entry for entry in sys.path if entry.startswith("/work/.local")],
    "rlimits": [resource.getrlimit(r) for r in (resource.RLIMIT_NOFILE, resource.RLIMIT_FSIZE, resource.RLIMIT_CORE)],
    "argv": sys.argv,
    "path0": sys.path[0],
    "cwd": os.getcwd(),
    "own_group": os.getpgid(0) == os.getpid(),
    "oom_score_adj": open("/proc/self/oom_score_adj").read().strip(),
    "descriptors": len(os.listdir("/proc/self/fd")),
    "stdin": sys.stdin.read(),
    "age_s": float(open("/proc/uptime").read().split()[0])
    - int(open("/proc/self/stat").read().rpartition(")")[2].split()[19]) / os.sysconf("SC_CLK_TCK"),
}))
"""


@pytest.fixture(params=["docker", GVISOR, OCI, KUBERNETES])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every runtime the project offers (the engine's default, gVisor, runc without Docker) and the
    Kubernetes cluster."""
    return backend_named(request, request.param)


def pooled(backend: Backend, size: int = 2, max_idle_s: float = 300) -> Sandbox:
    base = backend.settings
    engine = base.engine.model_copy(update={"pool_size": size, "pool_max_idle_s": max_idle_s})
    return Sandbox(base.model_copy(update={"engine": engine}), backend.engine)


async def test_two_jobs_in_a_row_from_the_pool_share_nothing(backend: Backend) -> None:
    async with pooled(backend) as sandbox:
        assert sandbox.pool is not None
        await sandbox.pool.filled()
        first = await sandbox.run(snippet(FIRST_JOB, env={"JOB_SECRET": "s3cret"}))
        await sandbox.pool.filled()
        second = await sandbox.run(snippet(SECOND_JOB))
    assert first.warm_start
    assert first.stdout == "s3cret\n"
    assert second.warm_start
    assert json.loads(second.stdout) == {"work": ["main.py"], "tmp": [], "env": None, "sleepers": []}
    assert backend.sandboxes_of() == []


async def test_a_cell_in_a_warm_sandbox_starts_as_one_in_a_cold_sandbox(backend: Backend) -> None:
    """The launcher starts the notebook runner with the sandbox, before any job; a job it cannot
    serve exactly as a fresh one would (an environment variable Python reads as it starts, a user
    site-packages among the files) gets a fresh runner. Either way, the cell sees the same."""
    cold = pooled(backend, size=0)
    version = (await cold.run(snippet("import sys\nprint('%d.%d' % sys.version_info[:2])"))).stdout.strip()
    site = ProjectFile(path=f".local/lib/python{version}/site-packages/userlib.py", content="")
    requests = {
        "taken early": snippet(HOW_STARTED, env={"JOB_VAR": "x"}, notebook=True, stdin="in", args=["-a"]),
        "python reads it": snippet(HOW_STARTED, env={"PYTHONHASHSEED": "0"}, notebook=True),
        "user site": snippet(HOW_STARTED, notebook=True).model_copy(
            update={"files": [ProjectFile(path="main.py", content=HOW_STARTED), site]}
        ),
    }
    ages = {}  # of the cell's process as its code starts, in a warm sandbox
    async with pooled(backend, size=1) as sandbox:
        assert sandbox.pool is not None
        for name, request in requests.items():
            await sandbox.pool.filled()
            await anyio.sleep(1)  # a runner started with the sandbox is older than the job by this
            warm = await sandbox.run(request)
            assert warm.warm_start, name
            warm_saw, cold_saw = json.loads(warm.stdout), json.loads((await cold.run(request)).stdout)
            ages[name] = warm_saw.pop("age_s")
            cold_saw.pop("age_s")
            assert warm_saw == cold_saw, name
    # The runner started with the sandbox took the cell (under gVisor it may start 0.1-0.2 s after
    # the sandbox counts as ready); the others got runners of their own, started for them.
    assert ages["taken early"] >= 0.5, ages
    assert max(ages["python reads it"], ages["user site"]) < 0.5, ages
    seen = {name: json.loads((await cold.run(request)).stdout) for name, request in requests.items()}
    assert (seen["taken early"]["env"], seen["taken early"]["child_env"]) == ("x", "x\n")
    assert seen["taken early"]["stdin"] == "in"
    assert seen["taken early"]["argv"] == ["main.py", "-a"]
    alike = ("rlimits", "path0", "cwd", "own_group", "oom_score_adj", "descriptors")
    early, fresh = seen["taken early"], seen["python reads it"]  # the second gets a runner of its own
    assert {key: early[key] for key in alike} == {key: fresh[key] for key in alike}
    if backend.name != KUBERNETES:  # the program is the OOM killer's first choice (SECURITY.md)
        assert early["oom_score_adj"] == "1000"
    assert seen["python reads it"]["hash_randomization"] == 0
    assert seen["user site"]["user_site"] == [f"/work/.local/lib/python{version}/site-packages"]
    assert backend.sandboxes_of() == []


async def test_an_empty_pool_never_holds_the_caller_up(backend: Backend) -> None:
    async with pooled(backend, size=1) as sandbox:
        assert sandbox.pool is not None
        await sandbox.pool.filled()
        results = []

        async def run() -> None:
            results.append(await sandbox.run(snippet("print('ok')")))

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(run)
    assert [r.stdout for r in results] == ["ok\n"] * 3
    assert sorted(r.warm_start for r in results) == [False, False, True]
    assert backend.sandboxes_of() == []


async def test_a_job_with_other_limits_starts_cold(backend: Backend) -> None:
    async with pooled(backend) as sandbox:
        assert sandbox.pool is not None
        await sandbox.pool.filled()
        other = await sandbox.run(snippet("print(1)", limits={"memory_mib": 128}))
        same = await sandbox.run(snippet("print(1)", limits={"timeout_s": 5}))
        assert sandbox.pool.ready >= 1
    assert (other.warm_start, other.limits.memory_mib) == (False, 128)
    assert same.warm_start  # the timeout is enforced from outside: any warm container fits


async def test_a_container_that_waited_too_long_is_replaced(backend: Backend) -> None:
    async with pooled(backend, size=1, max_idle_s=1.0) as sandbox:
        assert sandbox.pool is not None
        await sandbox.pool.filled()
        first = set(backend.sandboxes_of())
        await anyio.sleep(2.5)
        await sandbox.pool.filled()
        later = set(backend.sandboxes_of())
        assert len(later) == 1
        assert not first & later
        result = await sandbox.run(snippet("print('fresh')"))
    assert result.stdout == "fresh\n"


async def test_a_warm_container_that_died_is_not_handed_out(backend: Backend) -> None:
    async with pooled(backend, size=1) as sandbox:
        assert sandbox.pool is not None
        await sandbox.pool.filled()
        (idle,) = backend.sandboxes_of()
        backend.kill(idle)
        await anyio.sleep(0.5)
        result = await sandbox.run(snippet("print('still served')"))
    assert result.stdout == "still served\n"
    assert result.warm_start is False
    assert backend.sandboxes_of() == []


async def test_a_pool_of_size_0_is_off(backend: Backend) -> None:
    async with pooled(backend, size=0) as sandbox:
        assert sandbox.pool is None
        result = await sandbox.run(snippet("print(1)"))
    assert result.warm_start is False


def test_start_up_removes_the_pool_of_a_server_that_was_killed(backend: Backend) -> None:
    server = stdio_server(backend.server_env())
    try:
        deadline = time.monotonic() + 30
        while len(backend.sandboxes_of(server.pid)) < 2:
            assert time.monotonic() < deadline, "the server's pool did not fill"
            time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGKILL)  # no chance to clean up
        server.wait()
    assert len(backend.sandboxes_of(server.pid)) == 2
    Sandbox(backend.settings, backend.engine).start()
    assert backend.sandboxes_of(server.pid) == []


def test_a_server_stopped_with_sigterm_leaves_no_container(backend: Backend) -> None:
    server = stdio_server(backend.server_env())
    deadline = time.monotonic() + 30
    while len(backend.sandboxes_of(server.pid)) < 2:
        assert time.monotonic() < deadline, "the server's pool did not fill"
        time.sleep(0.1)
    server.send_signal(signal.SIGTERM)
    server.communicate(timeout=30)
    assert server.returncode == 0
    assert backend.sandboxes_of(server.pid) == []
