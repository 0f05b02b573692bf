"""Helpers shared by tests: building requests and reading results."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup
from mcp import Client

from agent_sandbox.models import LimitRequest, ProjectFile, RunRequest, RunResult
from agent_sandbox.sandbox import Sandbox

SandboxFactory = Callable[..., Awaitable[Sandbox]]


def snippet(code: str, **fields: object) -> RunRequest:
    """A one-file request; ``limits`` may be given as a dict."""
    limits = fields.pop("limits", {})
    assert isinstance(limits, dict)
    return RunRequest(
        files=[ProjectFile(path="main.py", content=code)],
        limits=LimitRequest(**limits),
        **fields,  # type: ignore[arg-type]
    )


def kinds(result: RunResult) -> set[str]:
    return {v.kind.value for v in result.violations}


@asynccontextmanager
async def while_running(client: Client, code: str) -> AsyncIterator[TaskGroup]:
    """Call run_python with ``code`` in the background; enter once the program is running.

    Leaving waits for the call to end, unless the body cancels the yielded task group."""
    running = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message == "the program is running":
            running.set()

    async with anyio.create_task_group() as group:
        group.start_soon(
            lambda: client.call_tool("run_python", {"code": code}, progress_callback=on_progress)
        )
        await running.wait()
        yield group
