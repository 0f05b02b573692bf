"""MCP Tasks: a ``tools/call`` of ``run_python`` or ``run_project`` that asks for a task becomes a
background run (the same runs, ids, owners and store as ``background: true``), followed with
``tasks/get``, ``tasks/result``, ``tasks/cancel`` and ``tasks/list``.

Two generations of the protocol are served:

- 2025-11-25, core: the client sends ``task`` on ``tools/call``; the server declares
  ``capabilities.tasks`` at ``initialize`` and each run tool's ``execution.taskSupport``.
- 2026-07-28, the ``io.modelcontextprotocol/tasks`` extension: a client that declares it on a
  request gets a task for every run call (the server decides); ``tasks/get`` inlines the result,
  and there is no ``tasks/result`` or ``tasks/list``.

The task-making part is a middleware (it runs before the SDK validates and sieves results, so it
can answer with a task, which 2025's ``tools/call`` result type has no room for); the methods are
an ``Extension``. A client that negotiates neither gets today's synchronous calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import require_client_extension
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CancelTaskRequestParams,
    GetTaskPayloadRequestParams,
    GetTaskRequestParams,
    PaginatedRequestParams,
    RequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import Field

from agent_sandbox.background import BackgroundRuns
from agent_sandbox.config import ResultSettings
from agent_sandbox.errors import RunError, describe
from agent_sandbox.run_store import RunRecord
from agent_sandbox.server.background_tools import status_answer, status_of
from agent_sandbox.server.clients import Channel, client_of_request
from agent_sandbox.server.content import tool_result
from agent_sandbox.server.summary import escape_controls

EXTENSION = "io.modelcontextprotocol/tasks"
RELATED_TASK = "io.modelcontextprotocol/related-task"
IMMEDIATE_RESPONSE = "io.modelcontextprotocol/model-immediate-response"
TASK_TOOLS = frozenset({"run_python", "run_project"})
INVALID_PARAMS, METHOD_NOT_FOUND = -32602, -32601
POLL_INTERVAL_MS = 1000
LEGACY = frozenset({"2025-11-25"})
MODERN = frozenset(MODERN_PROTOCOL_VERSIONS)
_STATUS = {
    "queued": "working",
    "running": "working",
    "finished": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "lost": "failed",
}


class UpdateTaskParams(RequestParams):
    """``tasks/update`` (2026): answers to a task's input requests; runs never ask for any."""

    task_id: str
    input_responses: dict[str, Any] = Field(default_factory=dict)


class RunTasks(Extension):
    """Background runs as MCP tasks, for the client that started them only."""

    identifier = EXTENSION

    def __init__(self, background: BackgroundRuns, channel: Channel, results: ResultSettings):
        self.background = background
        self.channel = channel
        self.results = results

    def methods(self) -> list[MethodBinding]:
        return [
            MethodBinding("tasks/get", GetTaskRequestParams, self._get, protocol_versions=LEGACY | MODERN),
            MethodBinding(
                "tasks/cancel", CancelTaskRequestParams, self._cancel, protocol_versions=LEGACY | MODERN
            ),
            MethodBinding(
                "tasks/result", GetTaskPayloadRequestParams, self._result, protocol_versions=LEGACY
            ),
            MethodBinding("tasks/list", PaginatedRequestParams, self._list, protocol_versions=LEGACY),
            MethodBinding("tasks/update", UpdateTaskParams, self._update, protocol_versions=MODERN),
        ]

    async def middleware(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Declare tasks where 2025 wants them, and turn a task-asking run call into a task."""
        if not self.background.offered:  # nothing to declare, no call to make a task of
            return await call_next(ctx)
        if ctx.method == "initialize":
            return _with_capability(await call_next(ctx))
        if ctx.method == "tools/list" and not _modern(ctx):
            return _with_task_support(await call_next(ctx))
        if ctx.method != "tools/call" or not isinstance(ctx.params, Mapping):
            return await call_next(ctx)
        name = ctx.params.get("name")
        if _modern(ctx):
            # The server decides: a task when one can start now, else the call as it always was.
            if name not in TASK_TOOLS or not _declared(ctx) or self.background.refusal(self._owner(ctx)):
                return await call_next(ctx)
        elif ctx.params.get("task") is None:
            return await call_next(ctx)
        elif name not in TASK_TOOLS:
            raise MCPError(METHOD_NOT_FOUND, f"tool {name!r} does not run as a task; call it without `task`")
        return await self._start(ctx, call_next)

    async def _start(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """The call, made as a background run: its answer is the run's status, made a task."""
        assert isinstance(ctx.params, Mapping)
        params = {key: value for key, value in ctx.params.items() if key != "task"}
        arguments = params.get("arguments")
        params["arguments"] = {**(arguments if isinstance(arguments, Mapping) else {}), "background": True}
        started = await call_next(dataclasses.replace(ctx, params=params))
        if not isinstance(started, Mapping) or started.get("isError"):
            raise MCPError(INVALID_PARAMS, _text_of(started))
        record = self.background.status(str(started["structuredContent"]["run_id"]), self._owner(ctx))
        if _modern(ctx):
            return {"resultType": "task", **self._task(record, modern=True)}
        return {"task": self._task(record), "_meta": {IMMEDIATE_RESPONSE: f"Started as task {record.id}"}}

    async def _get(self, ctx: ServerRequestContext[Any, Any], params: GetTaskRequestParams) -> HandlerResult:
        record = self._record(ctx, params.task_id)
        if not _modern(ctx):
            return self._task(record)
        task: dict[str, Any] = {"resultType": "complete", **self._task(record, modern=True)}
        if record.state == "finished":
            task["result"] = self._result_of(record)
        elif record.state in ("failed", "lost"):
            task["result"] = _failed_result(record, self.background)
        return task

    async def _result(
        self, ctx: ServerRequestContext[Any, Any], params: GetTaskPayloadRequestParams
    ) -> HandlerResult:
        """2025: once the run has ended, what the tool call would have returned."""
        record = self._record(ctx, params.task_id)
        if record.in_flight:
            record = await self.background.wait(record.id, self._owner(ctx), float("inf"))
        if record.state == "cancelled":
            raise MCPError(INVALID_PARAMS, f"task {record.id} was cancelled: it has no result")
        result = (
            self._result_of(record) if record.state == "finished" else _failed_result(record, self.background)
        )
        meta = {**dict(result.get("_meta") or {}), RELATED_TASK: {"taskId": record.id}}
        return {**result, "_meta": meta}

    async def _cancel(
        self, ctx: ServerRequestContext[Any, Any], params: CancelTaskRequestParams
    ) -> HandlerResult:
        record = self._record(ctx, params.task_id)
        if not record.in_flight:
            if _modern(ctx):
                return {}  # 2026: cancelling an ended task is acknowledged and changes nothing
            raise MCPError(INVALID_PARAMS, f"task {record.id} has already ended ({_status(record, False)})")
        record = await self.background.cancel(record.id, self._owner(ctx))
        return {} if _modern(ctx) else self._task(record)

    async def _list(
        self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams
    ) -> HandlerResult:
        return {"tasks": [self._task(record) for record in self.background.runs(self._owner(ctx))]}

    async def _update(self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams) -> HandlerResult:
        self._record(ctx, params.task_id)
        return {}  # a run never waits for input

    def _record(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> RunRecord:
        if _modern(ctx):
            require_client_extension(ctx, EXTENSION)
        try:
            return self.background.status(task_id, self._owner(ctx))
        except RunError as exc:
            raise MCPError(INVALID_PARAMS, describe(exc)) from None

    def _owner(self, ctx: ServerRequestContext[Any, Any]) -> str:
        return client_of_request(ctx, self.channel)

    def _task(self, record: RunRecord, modern: bool = False) -> dict[str, Any]:
        """The run as a ``Task``: its state, and a message with the newest line it printed."""
        status = status_of(record, self.background)
        last = (status.stdout_tail or status.stderr_tail).rstrip("\n").rpartition("\n")[2]
        message = status.error or (status.stage or status.state) + (
            f"; last output: {escape_controls(last[-200:])}" if last else ""
        )
        ended = record.ended or record.created
        ttl_ms = int(self.background.settings.result_ttl_s * 1000)
        task: dict[str, Any] = {
            "taskId": record.id,
            "status": _status(record, modern),
            "statusMessage": message,
            "createdAt": _iso(record.created),
            "lastUpdatedAt": _iso(ended if not record.in_flight else datetime.now(UTC).timestamp()),
        }
        if modern:
            return {**task, "ttlMs": ttl_ms, "pollIntervalMs": POLL_INTERVAL_MS}
        return {**task, "ttl": ttl_ms, "pollInterval": POLL_INTERVAL_MS}

    def _result_of(self, record: RunRecord) -> dict[str, Any]:
        result = self.background.store.result(record.id, None)
        if result is None:  # removed between the two looks
            raise MCPError(INVALID_PARAMS, f"task {record.id} has no stored result any more")
        return tool_result(result, self.results).model_dump(by_alias=True, mode="json", exclude_none=True)


def _failed_result(record: RunRecord, background: BackgroundRuns) -> dict[str, Any]:
    """A failed or lost run as the tool result a client reads: an error, with the output so far."""
    answer = status_answer(record, background).model_dump(by_alias=True, mode="json", exclude_none=True)
    return {**answer, "isError": True}


def _status(record: RunRecord, modern: bool) -> str:
    """2025 says a tool error is a failed task; 2026, a completed one whose result is an error."""
    status = _STATUS[record.state]
    return "completed" if modern and status == "failed" else status


def _modern(ctx: ServerRequestContext[Any, Any]) -> bool:
    return ctx.protocol_version in MODERN


def _declared(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    return bool(capabilities and capabilities.extensions and EXTENSION in capabilities.extensions)


def _with_capability(result: HandlerResult) -> HandlerResult:
    if isinstance(result, dict) and isinstance(result.get("capabilities"), dict):
        result["capabilities"]["tasks"] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
    return result


def _with_task_support(result: HandlerResult) -> HandlerResult:
    if isinstance(result, dict) and isinstance(result.get("tools"), list):
        for tool in result["tools"]:
            if isinstance(tool, dict) and tool.get("name") in TASK_TOOLS:
                tool["execution"] = {"taskSupport": "optional"}
    return result


def _text_of(answer: object) -> str:
    """A refused call's message, from its content."""
    if isinstance(answer, Mapping):
        for block in answer.get("content") or ():
            if isinstance(block, Mapping) and block.get("type") == "text":
                return str(block.get("text"))
    return "the call could not start as a task"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
