"""Parallel calls queue instead of failing: over stdio the one client has the whole server; over
HTTP each client has a share, and waits in line beyond it, visibly and cancellably, up to a queue
of its own. Real servers, real engine."""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from agent_sandbox.config import EngineSettings, Settings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server import build_server
from agent_sandbox.server.progress import STAGE_MESSAGES

from .conftest import ROOT, serving
from .test_ops import scrape, start_call, value

pytestmark = pytest.mark.anyio
SLEEP = "import time\ntime.sleep(1)\nprint(1)"


async def call_all(client: Client, count: int, code: str) -> tuple[list[Any], dict[int, list[str]]]:
    """``count`` run_python calls at once, as an agent issues parallel tool calls; their results
    and the progress messages each heard."""
    results: list[Any] = [None] * count
    messages: dict[int, list[str]] = defaultdict(list)

    async def call(index: int) -> None:
        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            messages[index].append(message or "")

        results[index] = await client.call_tool("run_python", {"code": code}, progress_callback=on_progress)

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(call, index)
    return results, messages


async def test_five_parallel_calls_from_one_stdio_client_all_run() -> None:
    """The default server runs 4 at once; the fifth call waits its turn instead of failing."""
    parameters = StdioServerParameters(
        command=sys.executable, args=["-m", "agent_sandbox", "serve"], cwd=str(ROOT), env=dict(os.environ)
    )
    async with Client(parameters, mode="legacy") as client:  # legacy: progress is reported
        results, messages = await call_all(client, 5, SLEEP)
    for result in results:
        assert result.is_error is False, result.content[0].text
        assert result.structured_content["stdout"] == "1\n"
    queued = [index for index, heard in messages.items() if "queued, 0 ahead" in heard]
    assert len(queued) == 1, dict(messages)


async def test_a_full_server_queue_is_busy_saying_how_many_wait(engine: DockerEngine) -> None:
    settings = Settings(engine=EngineSettings(pool_size=0, max_concurrent_runs=1, max_queued_runs=2))
    async with Client(build_server(Sandbox(settings, engine)), mode="legacy") as client:
        results, messages = await call_all(client, 4, SLEEP)
    refused = [result for result in results if result.is_error]
    assert len(refused) == 1
    assert (
        refused[0]
        .content[0]
        .text.endswith(
            "the sandbox is busy: 1 runs are in progress and 2 are waiting, the most it queues; "
            "try again in a few seconds"
        )
    )
    assert sum(not result.is_error for result in results) == 3
    heard = sorted(
        message for index in messages for message in messages[index] if message.startswith("queued")
    )
    assert heard == ["queued, 0 ahead", "queued, 0 ahead", "queued, 1 ahead"]  # the second moved up


async def test_over_http_calls_past_a_clients_share_wait_in_line_cancellably_and_visibly() -> None:
    env = {
        "AGENT_SANDBOX_SERVER__MAX_RUNS_PER_CLIENT": "1",
        "AGENT_SANDBOX_SERVER__MAX_QUEUED_PER_CLIENT": "2",
    }
    with serving("streamable-http", env=env) as (url, _, _):
        async with (
            Client(f"{url}/mcp", mode="legacy") as mine,
            Client(f"{url}/mcp", mode="legacy") as other,
            anyio.create_task_group() as group,
        ):
            await start_call(group, mine, "import time; time.sleep(3)", STAGE_MESSAGES["running"])
            async with anyio.create_task_group() as waiting:  # cancelled below
                await start_call(waiting, mine, "print('second')", "queued, 0 ahead")
                await start_call(waiting, mine, "print('third')", "queued, 1 ahead")
                two_waiting = await scrape(url)
                busy = await mine.call_tool("run_python", {"code": "print('fourth')"})
                elsewhere = await other.call_tool("run_python", {"code": "print('another client')"})
                waiting.cancel_scope.cancel()
            with anyio.fail_after(15):  # the server learns of the cancellations a moment later
                while value(after := await scrape(url), "agent_sandbox_runs_queued") != 0:
                    await anyio.sleep(0.1)
            later = await mine.call_tool("run_python", {"code": "print('after')"})
    assert value(two_waiting, "agent_sandbox_runs_queued") == 2
    assert value(two_waiting, "agent_sandbox_runs_in_progress") == 1
    assert busy.is_error
    assert busy.content[0].text.endswith(
        "this client is busy: it has 1 runs in progress and 2 waiting, the most one client may "
        "queue; wait for some to finish first"
    )
    assert elsewhere.is_error is False  # another client's share is its own
    assert value(after, "agent_sandbox_runs_total", tool="run_python", outcome="busy") == 1
    assert value(after, "agent_sandbox_runs_total", tool="run_python", outcome="cancelled") == 2
    assert later.structured_content is not None
    assert later.structured_content["stdout"] == "after\n"
