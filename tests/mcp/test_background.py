"""Background runs against the real server and engine, over stdio and Streamable HTTP: a call
that returns at once, the output so far while it runs, the same result a foreground call gives,
a cancel that removes the container, results that outlive a killed server, and ownership."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest
from mcp import Client

from tests.helpers import owned_by

from .conftest import serving
from .test_transports import stdio_parameters

pytestmark = pytest.mark.anyio

# Prints a line a second and runs until its 20 s time limit stops it.
TICKING = "import time\ni = 0\nwhile True:\n    print('tick', i, flush=True)\n    i += 1\n    time.sleep(1)\n"


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A server with a store of its own and no warm pool, so each run's container is its own."""
    return {
        "AGENT_SANDBOX_RUNS__DIR": str(tmp_path / "runs"),
        "AGENT_SANDBOX_ENGINE__POOL_SIZE": "0",
        **extra,
    }


@asynccontextmanager
async def connected(transport: str, env: dict[str, str]) -> AsyncIterator[tuple[Client, int]]:
    """A client of a real server process over ``transport``, and the server's pid."""
    if transport == "stdio":
        async with Client(stdio_parameters(env), mode="legacy") as client:
            yield client, server_pid(env["AGENT_SANDBOX_RUNS__DIR"])
        return
    with serving("streamable-http", env) as (url, process, _):
        async with Client(f"{url}/mcp", mode="legacy") as client:
            yield client, process.pid


def server_pid(runs_dir: str) -> int:
    """The server process this test started: the one whose environment names its store."""
    marker = f"AGENT_SANDBOX_RUNS__DIR={runs_dir}".encode()
    for name in filter(str.isdigit, os.listdir("/proc")):
        with suppress(OSError):
            if marker in Path(f"/proc/{name}/environ").read_bytes().split(b"\0"):
                return int(name)
    raise AssertionError("the server process was not found")


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert result.is_error is False, result.content
    assert result.structured_content is not None
    return result.structured_content


async def status_when(client: Client, run_id: str, done: Any, within_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        status = await call(client, "run_status", {"run_id": run_id})
        if done(status):
            return status
        assert time.monotonic() < deadline, status
        await anyio.sleep(0.3)


@pytest.mark.parametrize("transport", ["stdio", "streamable-http"])
async def test_a_background_run_returns_at_once_shows_its_output_and_ends_as_a_foreground_one(
    transport: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    async with connected(transport, server_env(tmp_path)) as (client, pid):
        started = time.monotonic()
        answer = await call(client, "run_python", {"code": TICKING, "timeout_s": 20, "background": True})
        assert time.monotonic() - started < 1.0
        assert answer["state"] in ("queued", "running")
        assert "run_result" in answer["next"]
        run_id = answer["run_id"]

        status = await status_when(client, run_id, lambda s: s["stdout_tail"].count("tick") >= 3)
        assert status["state"] == "running"
        assert status["stdout_tail"].startswith("tick 0\ntick 1\ntick 2\n")
        assert status["elapsed_s"] < 15

        background = await call(client, "run_result", {"run_id": run_id, "wait_s": 40})
        foreground = await call(client, "run_python", {"code": TICKING, "timeout_s": 3})
        assert set(background) == set(foreground)
        assert [v["kind"] for v in background["violations"]] == ["timeout"]
        assert [v["kind"] for v in foreground["violations"]] == ["timeout"]
        assert background["timed_out"]
        assert background["limits"]["timeout_s"] == 20
        assert background["stdout"].startswith("tick 0\n")
        assert background["stdout"].count("tick") >= 19
        assert background["stopped_at"]["line"] == 6  # time.sleep(1)
        listed = await call(client, "runs_list", {})
        assert [run["state"] for run in listed["runs"]] == ["finished"]

        doomed = await call(client, "run_python", {"code": TICKING, "timeout_s": 60, "background": True})
        await status_when(client, doomed["run_id"], lambda s: s["stdout_bytes"] > 0)
        assert len(docker_client.containers.list(filters=owned_by(pid))) == 1
        started = time.monotonic()
        cancelled = await call(client, "run_cancel", {"run_id": doomed["run_id"]})
        assert time.monotonic() - started < 5
        assert cancelled["state"] == "cancelled"
        assert docker_client.containers.list(all=True, filters=owned_by(pid)) == []


async def test_a_killed_server_keeps_finished_results_and_reports_runs_in_flight_as_lost(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    env = server_env(tmp_path)
    killed: list[BaseException] = []
    try:
        async with connected("stdio", env) as (client, pid):
            finished = await call(client, "run_python", {"code": "print('kept')", "background": True})
            await call(client, "run_result", {"run_id": finished["run_id"], "wait_s": 30})
            lost = await call(client, "run_python", {"code": TICKING, "timeout_s": 60, "background": True})
            await status_when(client, lost["run_id"], lambda s: s["stdout_bytes"] >= 14)  # two ticks
            await anyio.sleep(1.2)  # the output so far reaches the disk once a second
            os.kill(pid, signal.SIGKILL)
            with anyio.fail_after(10):
                await client.list_tools()
    except BaseException as exc:  # the server died under the client: any of the SDK's ways to say so
        killed.append(exc)
    assert killed, "the client did not notice its server was killed"
    assert docker_client.containers.list(all=True, filters=owned_by(pid)) != []  # as a crash leaves it

    async with connected("stdio", env) as (client, _):
        result = await call(client, "run_result", {"run_id": finished["run_id"], "wait_s": 0})
        assert result["stdout"] == "kept\n"
        assert result["exit_code"] == 0
        status = await call(client, "run_result", {"run_id": lost["run_id"], "wait_s": 0})
        assert status["state"] == "lost"
        assert "the server stopped while this run was in flight" in status["error"]
        assert status["stdout_tail"].startswith("tick 0\ntick 1\n")
        # The restarted server removed what the killed one left.
        assert docker_client.containers.list(all=True, filters=owned_by(pid)) == []


async def test_another_client_is_told_there_is_no_such_run(tmp_path: Path) -> None:
    with serving("streamable-http", server_env(tmp_path)) as (url, _, _):
        async with Client(f"{url}/mcp", mode="legacy") as owner, Client(f"{url}/mcp", mode="legacy") as other:
            mine = await call(owner, "run_python", {"code": "print(1)", "background": True})
            theirs = await other.call_tool("run_status", {"run_id": mine["run_id"]})
            unknown = await other.call_tool("run_status", {"run_id": "A" * 22})
            assert theirs.is_error
            assert unknown.is_error
            said = theirs.content[0].text.replace(mine["run_id"], "ID")  # type: ignore[union-attr]
            assert said == unknown.content[0].text.replace("A" * 22, "ID")  # type: ignore[union-attr]
            assert "there is no run 'ID' for this client" in said
            assert (await call(other, "runs_list", {}))["runs"] == []
            assert (await call(owner, "run_result", {"run_id": mine["run_id"]}))["stdout"] == "1\n"


async def test_the_cap_on_background_runs_names_itself(tmp_path: Path) -> None:
    env = server_env(tmp_path, AGENT_SANDBOX_RUNS__MAX_BACKGROUND_RUNS_PER_CLIENT="1")
    async with connected("stdio", env) as (client, _):
        first = await call(client, "run_python", {"code": TICKING, "timeout_s": 30, "background": True})
        refused = await client.call_tool("run_python", {"code": "print(1)", "background": True})
        assert refused.is_error
        text = refused.content[0].text  # type: ignore[union-attr]
        assert "runs.max_background_runs_per_client = 1" in text
        assert "run_cancel" in text
        await call(client, "run_cancel", {"run_id": first["run_id"]})
        again = await call(client, "run_python", {"code": "print(1)", "background": True})
        assert (await call(client, "run_result", {"run_id": again["run_id"]}))["stdout"] == "1\n"


async def test_run_status_shows_the_limits_a_run_has_reached_while_it_runs(tmp_path: Path) -> None:
    filler = (
        "import time\ntry:\n    with open('/work/big', 'wb') as f:\n        while True:\n"
        "            f.write(b'x' * (1 << 20))\nexcept OSError as e:\n    print('full:', e.strerror, flush=True)\n"
        "time.sleep(30)\n"
    )
    async with connected("stdio", server_env(tmp_path)) as (client, _):
        started = await call(client, "run_python", {"code": filler, "timeout_s": 40, "background": True})
        status = await status_when(client, started["run_id"], lambda s: s["limits_hit"])
        assert status["state"] == "running"  # measured by the launcher, before the run ends
        assert status["limits_hit"] == ["disk"]
        assert status["stdout_tail"] == "full: No space left on device\n"
        await call(client, "run_cancel", {"run_id": started["run_id"]})
