"""The MCP tools that follow background runs: ``run_status`` (the output so far), ``run_result``
(waits within the client's patience), ``run_cancel`` and ``runs_list``. A run is started by
``run_python`` or ``run_project`` with ``background: true`` (or as an MCP task, see tasks.py);
each tool acts for the calling client only, and an id of another client's run is answered as an
unknown one."""

# No `from __future__ import annotations`: the SDK evaluates the tools' annotations.
import time
from collections.abc import Callable
from typing import Annotated

from mcp.server.apps import client_supports_apps
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, Field

from agent_sandbox.background import BackgroundRuns
from agent_sandbox.config import ResultSettings
from agent_sandbox.errors import RunError, describe
from agent_sandbox.models import RunAnswer, RunStatus
from agent_sandbox.run_store import RunRecord
from agent_sandbox.server.content import tool_result
from agent_sandbox.server.progress import HEARTBEAT_S
from agent_sandbox.server.summary import escape_controls
from agent_sandbox.server.tool_table import add_tools
from agent_sandbox.server.viewer import TOOL_META

ClientOf = Callable[[Context], str]
MAX_WAIT_S = 300.0
DEFAULT_WAIT_S = 30.0
_ID_FIELD = Field(description="A run_id from run_python or run_project with background=true.")


class RunList(BaseModel):
    """This client's background runs, newest first."""

    runs: list[RunStatus]


def status_of(record: RunRecord, background: BackgroundRuns) -> RunStatus:
    """The run's status as a client is told it, with what to call next."""
    output = record.output
    # Once finished, the verdict's, which also counts what only the end shows.
    limits_hit = record.limits_hit if record.state == "finished" else output.limits_hit if output else ()
    return RunStatus(
        run_id=record.id,
        state=record.state,
        tool=record.tool,
        stage=background.stage(record.id) if record.in_flight else None,
        elapsed_s=record.elapsed_s(),
        timeout_s=record.timeout_s,
        stdout_tail=output.stdout if output else "",
        stderr_tail=output.stderr if output else "",
        stdout_bytes=output.stdout_bytes if output else 0,
        stderr_bytes=output.stderr_bytes if output else 0,
        limits_hit=list(limits_hit),
        error=record.error,
        next=_next(record),
    )


def status_answer(record: RunRecord, background: BackgroundRuns) -> CallToolResult:
    """The status as a tool result: a few lines a model reads, and all of it structured."""
    status = status_of(record, background)
    return CallToolResult(
        content=[TextContent(type="text", text=_status_text(status))],
        structured_content=status.model_dump(mode="json"),
    )


def add_background_tools(
    server: MCPServer, background: BackgroundRuns, client_of: ClientOf, results: ResultSettings
) -> None:
    """Register the tools that follow background runs; a finished run's result comes back
    exactly as a foreground call would have returned it."""

    def refused(exc: RunError) -> ToolError:
        return ToolError(describe(exc))

    async def run_status(
        run_id: Annotated[str, _ID_FIELD], ctx: Context
    ) -> Annotated[CallToolResult, RunStatus]:
        try:
            return status_answer(background.status(run_id, client_of(ctx)), background)
        except RunError as exc:
            raise refused(exc) from None

    async def run_result(
        run_id: Annotated[str, _ID_FIELD],
        ctx: Context,
        wait_s: Annotated[
            float,
            Field(
                ge=0,
                le=MAX_WAIT_S,
                description="Seconds to wait for the run to end; if it is still running then, its "
                "status comes back instead (call again). Keep it below your own tool-call timeout.",
            ),
        ] = DEFAULT_WAIT_S,
    ) -> Annotated[CallToolResult, RunAnswer]:
        owner = client_of(ctx)
        try:
            record = await _waiting(background, run_id, owner, wait_s, ctx)
            if record.state == "finished":
                result = background.store.result(run_id, owner)
                if result is not None:
                    return tool_result(result, results, apps=client_supports_apps(ctx))
        except RunError as exc:
            raise refused(exc) from None
        if record.state == "failed":
            raise ToolError(record.error or "the run failed")
        return status_answer(record, background)

    async def run_cancel(
        run_id: Annotated[str, _ID_FIELD], ctx: Context
    ) -> Annotated[CallToolResult, RunStatus]:
        try:
            return status_answer(await background.cancel(run_id, client_of(ctx)), background)
        except RunError as exc:
            raise refused(exc) from None

    async def runs_list(ctx: Context) -> Annotated[CallToolResult, RunList]:
        statuses = [status_of(record, background) for record in background.runs(client_of(ctx))]
        lines = [
            f"{s.run_id} {s.state} ({s.tool}, {s.elapsed_s:.1f} s, "
            f"{s.stdout_bytes + s.stderr_bytes} bytes of output)"
            for s in statuses
        ]
        return CallToolResult(
            content=[TextContent(type="text", text="\n".join(lines) or "no background runs")],
            structured_content=RunList(runs=statuses).model_dump(mode="json"),
        )

    settings = background.settings
    keep = f"Results are kept {settings.result_ttl_s:g} s after a run ends, across server restarts."
    add_tools(
        server,
        [
            (
                run_status,
                "Background run status",
                "The state of a background run and the last lines it printed so far (without waiting).",
                True,
            ),
            (
                run_result,
                "Background run result",
                "The result of a background run, the same as the foreground call would have returned; "
                "waits up to wait_s for it to end, else returns its status. " + keep,
                True,
            ),
            (run_cancel, "Cancel a background run", "Stop a background run and remove its sandbox.", False),
            (runs_list, "List background runs", "This client's background runs, newest first. " + keep, True),
        ],
        [run_cancel],
        meta={run_result: TOOL_META},  # a finished run's result: the run viewer renders it too
    )


async def _waiting(
    background: BackgroundRuns, run_id: str, owner: str, wait_s: float, ctx: Context
) -> RunRecord:
    """Wait for the run to end, telling the client it is still running every ``HEARTBEAT_S``."""
    started = time.monotonic()
    record = background.status(run_id, owner)
    while record.in_flight:
        left = wait_s - (time.monotonic() - started)
        if left <= 0:
            break
        record = await background.wait(run_id, owner, min(left, HEARTBEAT_S))
        if record.in_flight and wait_s - (time.monotonic() - started) > 0:
            waited = time.monotonic() - started
            await ctx.report_progress(waited, wait_s, f"still running, {record.elapsed_s():.0f} s so far")
    return record


def _next(record: RunRecord) -> str:
    run = f"run_id={record.id!r}"
    if record.in_flight:
        return (
            f"call run_result({run}, wait_s=30) to wait for the end (it returns this status again if "
            f"the run is still going), run_status({run}) for the output so far, or run_cancel({run})"
        )
    if record.state == "finished":
        return f"call run_result({run}) for the result"
    if record.state == "failed":
        return "read error, change what it names, and start the run again"
    return "start the run again if you still need it"


def _status_text(status: RunStatus) -> str:
    lines = [
        f"run {status.run_id}: {status.state}"
        + (f" ({status.stage})" if status.stage and status.stage != status.state else "")
        + f", {status.elapsed_s:.1f} s (time limit {status.timeout_s:g} s)"
    ]
    if status.error:
        lines.append(f"error: {status.error}")
    if status.limits_hit:
        lines.append("limits hit: " + ", ".join(status.limits_hit))
    for name, tail, size in (
        ("stdout", status.stdout_tail, status.stdout_bytes),
        ("stderr", status.stderr_tail, status.stderr_bytes),
    ):
        if size:
            lines += [
                f"--- {name} so far ({size} bytes; the last lines) ---",
                escape_controls(tail).rstrip("\n"),
            ]
    lines.append(f"next: {status.next}")
    return "\n".join(lines)
