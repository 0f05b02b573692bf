"""Background runs through the MCP layer on a scripted engine, in-process and in milliseconds:
starting one, its result (the same as the foreground call's), caps, refusals, expiry, time
limits, and the same runs as MCP Tasks (protocol 2025-11-25). The same against the real engine
and real clients is in tests/mcp (test_background.py, test_tasks.py)."""

from __future__ import annotations

import json
import time
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CallToolResult,
    CancelTaskRequest,
    CancelTaskRequestParams,
    CreateTaskResult,
    GetTaskPayloadRequest,
    GetTaskPayloadRequestParams,
    GetTaskRequest,
    GetTaskRequestParams,
    GetTaskResult,
    Implementation,
    ListTasksRequest,
    ListTasksResult,
    TextContent,
)

from agent_sandbox import run_store
from agent_sandbox.background import BackgroundRuns
from agent_sandbox.config import EngineSettings, LimitSettings, RunSettings, Settings, WorkspaceSettings
from agent_sandbox.engine.base import LIMITS, STDERR, STDOUT, OutputCallback, ProgressCallback
from agent_sandbox.engine.spec import Outcome, RunSpec
from agent_sandbox.errors import EngineUnavailable
from agent_sandbox.models import RunStatus
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server import build_server
from agent_sandbox.server.tasks import RELATED_TASK
from tests.scripted_engine import ScriptedEngine, outcome

pytestmark = pytest.mark.anyio
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
INVALID_PARAMS, METHOD_NOT_FOUND = -32602, -32601
UNAVAILABLE = "the sandbox is unavailable: no engine answers; start one"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Served:
    server: MCPServer
    runs: Path  # where its runs' records are

    def client(self, name: str = "agent") -> Client:
        """A client of its own: the in-process server tells clients apart by their name."""
        return Client(self.server, mode="legacy", client_info=Implementation(name=name, version="1"))

    def records(self) -> list[str]:
        return sorted(path.name for path in self.runs.iterdir()) if self.runs.exists() else []


def settings_in(tmp_path: Path, limits: LimitSettings | None = None, **runs: Any) -> Settings:
    return Settings(
        engine=EngineSettings(pool_size=0),
        workspaces=WorkspaceSettings(dir=str(tmp_path / "workspaces")),
        runs=RunSettings(dir=str(tmp_path / "runs"), **runs),
        limits=limits or LimitSettings(),
    )


@asynccontextmanager
async def served(
    tmp_path: Path, engine: ScriptedEngine, limits: LimitSettings | None = None, **runs: Any
) -> AsyncIterator[Served]:
    """A server on ``engine`` with its background runs open for as long as the block lasts."""
    settings = settings_in(tmp_path, limits, **runs)
    sandbox = Sandbox(settings, engine)
    background = BackgroundRuns(settings.runs)
    with anyio.fail_after(10):  # a run held for ever fails the test rather than hang it
        async with sandbox, background:
            yield Served(build_server(sandbox, background=background), settings.runs.path)


@asynccontextmanager
async def connected(
    tmp_path: Path, engine: ScriptedEngine, limits: LimitSettings | None = None, **runs: Any
) -> AsyncIterator[tuple[Client, Served]]:
    async with served(tmp_path, engine, limits, **runs) as server, server.client() as client:
        yield client, server


def text_of(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def status_of(result: CallToolResult) -> RunStatus:
    assert result.is_error is False, text_of(result)
    return RunStatus.model_validate(result.structured_content)


async def start(client: Client, code: str = "print('hi')", **arguments: Any) -> RunStatus:
    return status_of(await client.call_tool("run_python", {"code": code, "background": True, **arguments}))


async def test_a_background_call_returns_its_status_with_what_to_call_next(tmp_path: Path) -> None:
    async with connected(tmp_path, ScriptedEngine(outcome(stdout=b"hi\n"))) as (client, server):
        status = await start(client)
        assert len(status.run_id) == 22
        assert status.state in ("queued", "running")
        assert status.tool == "run_python"
        assert f"run_result(run_id={status.run_id!r}" in status.next
        assert server.records() == [status.run_id]
        ended = await client.call_tool("run_result", {"run_id": status.run_id, "wait_s": 5})
        later = status_of(await client.call_tool("run_status", {"run_id": status.run_id}))
    assert ended.structured_content is not None
    assert ended.structured_content["stdout"] == "hi\n"  # the result itself, not a status
    assert (later.state, later.stdout_tail, later.stdout_bytes) == ("finished", "hi\n", 3)
    assert later.next == f"call run_result(run_id={status.run_id!r}) for the result"


class PrintsThenWaits(ScriptedEngine):
    """Prints ``chunks`` (and reports limits reached) at once, then waits for ``release``."""

    def __init__(self, *chunks: tuple[int, bytes]):
        super().__init__(outcome(stdout=b"done\n"))
        self.chunks = chunks
        self.printed = anyio.Event()
        self.release = self.hold = anyio.Event()

    async def run(
        self,
        spec: RunSpec,
        on_progress: ProgressCallback | None = None,
        on_output: OutputCallback | None = None,
    ) -> Outcome:
        for stream, data in self.chunks:
            assert on_output is not None
            on_output(stream, data)
        self.printed.set()
        return await super().run(spec, on_progress, on_output)


async def test_run_status_shows_the_output_and_limits_so_far_while_it_runs(tmp_path: Path) -> None:
    engine = PrintsThenWaits((STDOUT, b"step 1\n"), (STDERR, b"careful\n"), (LIMITS, b"processes"))
    async with connected(tmp_path, engine) as (client, _):
        status = await start(client)
        await engine.printed.wait()
        running = status_of(await client.call_tool("run_status", {"run_id": status.run_id}))
        engine.release.set()
        await client.call_tool("run_result", {"run_id": status.run_id, "wait_s": 5})
        ended = status_of(await client.call_tool("run_status", {"run_id": status.run_id}))
    assert (running.state, running.stage) == ("running", "running")
    assert (running.stdout_tail, running.stderr_tail) == ("step 1\n", "careful\n")
    assert (running.stdout_bytes, running.stderr_bytes) == (7, 8)
    assert running.limits_hit == ["processes"]
    assert (ended.state, ended.stdout_tail) == ("finished", "step 1\ndone\n")
    assert ended.limits_hit == []  # once it has ended, the verdict's: this outcome broke no limit


async def test_run_result_returns_exactly_what_the_foreground_call_returns(tmp_path: Path) -> None:
    engine = ScriptedEngine(
        outcome(stdout=b"\x1b[31mred\x1b[0m\n", stderr=b"warn\n", exit_code=1, return_value="42",
                files={"plot.png": PNG, "data.bin": b"\x00\xff", "notes.txt": b"x\n"})
    )  # fmt: skip
    async with connected(tmp_path, engine) as (client, _):
        foreground = await client.call_tool("run_python", {"code": "1"})
        status = await start(client, "1")
        collected = await client.call_tool("run_result", {"run_id": status.run_id, "wait_s": 5})
    assert foreground.is_error is False
    assert collected.is_error is False
    assert foreground.structured_content is not None
    assert foreground.structured_content["stdout"] == "\x1b[31mred\x1b[0m\n"
    assert collected.structured_content == foreground.structured_content
    assert collected.content == foreground.content  # the summary, the image and the files' bytes
    assert [block.type for block in collected.content] == ["text", "image", "resource", "resource"]


async def test_a_run_whose_engine_fails_is_the_foreground_calls_tool_error(tmp_path: Path) -> None:
    engine = ScriptedEngine(EngineUnavailable("no engine answers; start one"))
    async with connected(tmp_path, engine) as (client, _):
        foreground = await client.call_tool("run_python", {"code": "1"})
        status = await start(client, "1")
        collected = await client.call_tool("run_result", {"run_id": status.run_id, "wait_s": 5})
        listed = await client.call_tool("runs_list", {})
    assert foreground.is_error
    assert collected.is_error
    assert text_of(foreground) == "Error executing tool run_python: " + UNAVAILABLE
    assert text_of(collected) == "Error executing tool run_result: " + UNAVAILABLE
    assert listed.structured_content is not None
    assert [run["state"] for run in listed.structured_content["runs"]] == ["failed"]


async def test_each_client_has_its_own_cap_and_its_own_runs(tmp_path: Path) -> None:
    engine = ScriptedEngine(outcome())
    engine.hold = anyio.Event()  # every run waits until the test lets it end
    async with (
        served(tmp_path, engine, max_background_runs_per_client=1) as server,
        server.client("a") as a,
        server.client("b") as b,
    ):
        first = await start(a)
        refused = await a.call_tool("run_python", {"code": "1", "background": True})
        theirs = await start(b)
        seen_by_b = await b.call_tool("run_cancel", {"run_id": first.run_id})
        unknown = await b.call_tool("run_cancel", {"run_id": "A" * 22})
        engine.hold.set()
        for client, status in ((a, first), (b, theirs)):
            done = await client.call_tool("run_result", {"run_id": status.run_id, "wait_s": 5})
            assert done.is_error is False
        again = await start(a)  # its run has ended: it may start another
    assert refused.is_error
    assert "this client already has 1 background runs in flight" in text_of(refused)
    assert "runs.max_background_runs_per_client = 1" in text_of(refused)
    assert sorted(server.records()) == sorted([first.run_id, theirs.run_id, again.run_id])
    # Another client's run id is answered as an unknown one, and its run goes on.
    assert seen_by_b.is_error
    assert unknown.is_error
    assert text_of(seen_by_b) == text_of(unknown).replace("A" * 22, first.run_id)


async def test_the_server_over_its_cap_refuses_every_client(tmp_path: Path) -> None:
    engine = ScriptedEngine(outcome())
    engine.hold = anyio.Event()
    async with (
        served(tmp_path, engine, max_background_runs=1) as server,
        server.client("a") as a,
        server.client("b") as b,
    ):
        await start(a)
        refused = await b.call_tool("run_python", {"code": "1", "background": True})
        engine.hold.set()
    assert refused.is_error
    assert "1 background runs are in flight on this server's store" in text_of(refused)
    assert "runs.max_background_runs = 1" in text_of(refused)


async def test_background_runs_can_be_turned_off(tmp_path: Path) -> None:
    async with connected(tmp_path, ScriptedEngine(outcome()), max_background_runs=0) as (client, server):
        refused = await client.call_tool("run_python", {"code": "1", "background": True})
        foreground = await client.call_tool("run_python", {"code": "1"})
    assert refused.is_error
    assert "background runs are off on this server (runs.max_background_runs = 0)" in text_of(refused)
    assert foreground.is_error is False
    assert server.records() == []


async def test_a_refused_request_comes_back_at_once_and_leaves_no_record(tmp_path: Path) -> None:
    async with connected(tmp_path, ScriptedEngine(outcome())) as (client, server):
        refused = await client.call_tool(
            "run_project", {"files": [{"path": "/abs.py", "content": ""}], "background": True}
        )
        listed = await client.call_tool("runs_list", {})
    assert refused.is_error
    assert "refused: files[0] ('/abs.py'): absolute paths are not allowed" in text_of(refused)
    assert server.records() == []
    assert listed.structured_content == {"runs": []}


async def test_a_server_without_an_open_background_runs_refuses_background_calls(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    closed = BackgroundRuns(settings.runs)  # never entered
    engine = ScriptedEngine(outcome())
    for server in (
        build_server(Sandbox(settings, engine)),
        build_server(Sandbox(settings, engine), background=closed),
    ):
        async with Client(server, mode="legacy") as client:
            refused = await client.call_tool("run_python", {"code": "1", "background": True})
        assert refused.is_error
        assert (
            "this server has no lifetime for background runs (an embedding: open its BackgroundRuns"
            in text_of(refused)
        )
    assert not settings.runs.path.exists() or list(settings.runs.path.iterdir()) == []


async def test_one_result_changed_on_disk_does_not_break_runs_list(tmp_path: Path) -> None:
    async with connected(tmp_path, ScriptedEngine(outcome())) as (client, server):
        intact, changed = await start(client), await start(client)
        for status in (intact, changed):
            await client.call_tool("run_result", {"run_id": status.run_id, "wait_s": 5})
        (server.runs / changed.run_id / "result.json").write_text(json.dumps({"result": {"stdout": 1}}))
        listed = await client.call_tool("runs_list", {})
    assert listed.is_error is False, text_of(listed)
    assert listed.structured_content is not None
    assert intact.run_id in [run["run_id"] for run in listed.structured_content["runs"]]


async def test_a_result_is_gone_once_its_ttl_has_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.time()
    later = 0.0  # the store's clock stands still but for this: a busy machine cannot expire it early

    def store_time() -> float:
        return started + later

    monkeypatch.setattr(run_store, "time", types.SimpleNamespace(time=store_time))
    async with connected(tmp_path, ScriptedEngine(outcome(stdout=b"hi\n")), result_ttl_s=0.2) as (
        client,
        server,
    ):
        status = await start(client)
        done = await client.call_tool("run_result", {"run_id": status.run_id, "wait_s": 5})
        assert done.is_error is False
        later = 0.25
        gone = await client.call_tool("run_result", {"run_id": status.run_id})
        assert server.records() == []
    assert gone.is_error
    assert f"there is no run {status.run_id!r} for this client: it ended more than 0.2 s ago" in text_of(gone)


async def test_a_background_run_may_ask_for_more_time_than_a_foreground_one(tmp_path: Path) -> None:
    limits = LimitSettings(max_timeout_s=60, max_background_timeout_s=600)
    async with connected(tmp_path, ScriptedEngine(outcome()), limits) as (client, server):
        longer = await start(client, timeout_s=500)
        too_long = await client.call_tool("run_python", {"code": "1", "timeout_s": 601, "background": True})
        foreground = await client.call_tool("run_python", {"code": "1", "timeout_s": 500})
        within = await client.call_tool("run_python", {"code": "1", "timeout_s": 60})
        await client.call_tool("run_result", {"run_id": longer.run_id, "wait_s": 5})
    assert longer.timeout_s == 500
    assert too_long.is_error
    assert "timeout_s 601 is above the maximum of 600; ask for 600 or less" in text_of(too_long)
    assert foreground.is_error
    assert "timeout_s 500 is above the maximum of 60" in text_of(foreground)
    assert "run it in the background, background=true, for up to 600" in text_of(foreground)
    assert within.is_error is False
    assert server.records() == [longer.run_id]


async def test_run_cancel_stops_a_run_and_its_result_says_so(tmp_path: Path) -> None:
    engine = ScriptedEngine(outcome())
    engine.hold = anyio.Event()  # never set: the run waits until it is cancelled
    async with connected(tmp_path, engine) as (client, _):
        status = await start(client)
        cancelled = status_of(await client.call_tool("run_cancel", {"run_id": status.run_id}))
        after = status_of(await client.call_tool("run_result", {"run_id": status.run_id, "wait_s": 0}))
    assert cancelled.state == "cancelled"
    assert cancelled.error is not None
    assert cancelled.error.startswith("cancelled")
    assert after.state == "cancelled"


# MCP Tasks, 2025-11-25: the client's typed call_tool expects a CallToolResult, so a task-augmented
# tools/call goes out raw; the tasks/* methods have typed requests.


async def call_as_task(client: Client, name: str, arguments: dict[str, Any]) -> CreateTaskResult:
    raw = await client.session._dispatcher.send_raw_request(
        "tools/call", {"name": name, "arguments": arguments, "task": {}}, {}
    )
    return CreateTaskResult.model_validate(raw)


async def get_task(client: Client, task_id: str) -> GetTaskResult:
    return await client.session.send_request(
        GetTaskRequest(params=GetTaskRequestParams(task_id=task_id)), GetTaskResult
    )


async def test_a_task_augmented_call_is_a_background_run_followed_as_a_task(tmp_path: Path) -> None:
    engine = ScriptedEngine(outcome(stdout=b"one\ntwo\n", files={"plot.png": PNG}))
    async with connected(tmp_path, engine) as (client, server):
        foreground = await client.call_tool("run_python", {"code": "1"})
        created = await call_as_task(client, "run_python", {"code": "1"})
        task_id = created.task.task_id
        assert created.task.status == "working"
        assert created.task.ttl == 86_400_000
        assert server.records() == [task_id]  # a background run like any other
        result = await client.session.send_request(
            GetTaskPayloadRequest(params=GetTaskPayloadRequestParams(task_id=task_id)), CallToolResult
        )
        polled = await get_task(client, task_id)
        listed = await client.session.send_request(ListTasksRequest(), ListTasksResult)
        as_run = await client.call_tool("run_result", {"run_id": task_id})
    assert result.structured_content == foreground.structured_content
    assert result.content == foreground.content
    assert result.meta is not None
    assert result.meta[RELATED_TASK] == {"taskId": task_id}
    assert (polled.status, polled.status_message) == ("completed", "finished; last output: two")
    assert [(task.task_id, task.status) for task in listed.tasks] == [(task_id, "completed")]
    assert as_run.structured_content == foreground.structured_content


async def test_tasks_are_refused_with_protocol_errors_that_say_why(tmp_path: Path) -> None:
    async with (
        served(tmp_path, ScriptedEngine(outcome())) as server,
        server.client("a") as a,
        server.client("b") as b,
    ):
        with pytest.raises(MCPError) as not_a_run:
            await call_as_task(a, "runs_list", {})
        with pytest.raises(MCPError) as refused:
            await call_as_task(a, "run_project", {"files": [{"path": "/abs.py", "content": ""}]})
        created = await call_as_task(a, "run_python", {"code": "1"})
        with pytest.raises(MCPError) as theirs:
            await get_task(b, created.task.task_id)
        with pytest.raises(MCPError) as unknown:
            await get_task(a, "A" * 22)
        await a.call_tool("run_result", {"run_id": created.task.task_id, "wait_s": 5})
    assert not_a_run.value.error.code == METHOD_NOT_FOUND
    assert "tool 'runs_list' does not run as a task" in not_a_run.value.error.message
    assert refused.value.error.code == INVALID_PARAMS
    assert "absolute paths are not allowed" in refused.value.error.message
    assert server.records() == [created.task.task_id]  # the refused one left no record
    for error in (theirs.value.error, unknown.value.error):
        assert error.code == INVALID_PARAMS
        assert "there is no run" in error.message


async def test_a_cancelled_task_is_cancelled_and_cannot_be_cancelled_again(tmp_path: Path) -> None:
    engine = ScriptedEngine(outcome())
    engine.hold = anyio.Event()  # never set: the run waits until it is cancelled
    async with connected(tmp_path, engine) as (client, _):
        created = await call_as_task(client, "run_python", {"code": "1"})
        request = CancelTaskRequest(params=CancelTaskRequestParams(task_id=created.task.task_id))
        cancelled = await client.session.send_request(request, GetTaskResult)
        with pytest.raises(MCPError) as again:
            await client.session.send_request(request, GetTaskResult)
        polled = await get_task(client, created.task.task_id)
    assert cancelled.status == polled.status == "cancelled"
    assert again.value.error.code == INVALID_PARAMS
    assert "has already ended (cancelled)" in again.value.error.message
