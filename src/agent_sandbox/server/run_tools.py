"""The MCP tools that run code, ``run_python`` and ``run_project``, and what one call of them does:
validation, the client's start rate, the run (within the client's fair share), the audit record
and the metrics. Refusals and infrastructure failures become tool errors whose message tells the
model what to change; a program that fails is a successful call."""

# No `from __future__ import annotations`: the SDK evaluates the tools' annotations, which
# refer to Field objects local to add_run_tools.
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import anyio
from mcp.server.apps import client_supports_apps
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field, ValidationError

from agent_sandbox.admission import Caller, Share
from agent_sandbox.background import BackgroundRuns
from agent_sandbox.batch import run_all
from agent_sandbox.engine.base import OutputCallback, ProgressCallback, no_progress
from agent_sandbox.errors import Busy, Refused, RunError, SandboxError, describe, describe_invalid
from agent_sandbox.live_output import LiveOutput
from agent_sandbox.models import (
    BatchItem,
    BatchResult,
    LimitRequest,
    ProjectFile,
    RunAnswer,
    RunRequest,
    RunResult,
)
from agent_sandbox.run_store import RunRecord
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server.audit import AuditEvent, AuditLog
from agent_sandbox.server.background_tools import status_answer
from agent_sandbox.server.clients import Channel, caller_of
from agent_sandbox.server.content import batch_summary, tool_result
from agent_sandbox.server.environment import describe_environment
from agent_sandbox.server.metrics import Metrics
from agent_sandbox.server.progress import RunProgress, Send
from agent_sandbox.server.start_rate import StartRate
from agent_sandbox.server.viewer import TOOL_META

_RequestFactory = Callable[[], RunRequest]
ANNOTATIONS = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)


def add_run_tools(
    server: MCPServer,
    sandbox: Sandbox,
    channel: Channel,
    metrics: Metrics,
    background: BackgroundRuns,
) -> None:
    """Register ``run_python`` and ``run_project`` on ``server``, running through ``sandbox`` (in
    the ``background`` when a call asks)."""
    settings = sandbox.settings
    limits = settings.limits
    calls = ToolCall(
        sandbox,
        channel,
        StartRate(settings.server.runs_per_minute_per_client),
        AuditLog(Path(settings.server.audit_log)) if settings.server.audit_log else None,
        metrics,
        background,
    )
    environment = describe_environment(settings)
    timeout_field = Field(
        default=None,
        gt=0,
        description=f"Seconds before the program is stopped (default {limits.timeout_s:g}, "
        f"at most {limits.max_timeout_s:g}; in the background at most "
        f"{limits.max_background_timeout_s:g}). Output printed before a stop is kept.",
    )
    background_field = Field(
        description="Run it in the background: the call returns a run_id at once; follow it with "
        "run_status (output so far), collect it with run_result, stop it with run_cancel. For work "
        "that may outlast your wait for a tool call (more than a minute or so).",
    )
    stdin_field = Field(default=None, description="Text given to the program on standard input.")
    image_field = Field(
        default=None,
        description=f"Image profile: one of {settings.engine.profiles} "
        f"(default {settings.engine.profile!r}).",
    )
    workspace_field = Field(
        default=None,
        description="A workspace id (workspace_create): start from its files, your files on top, "
        "and save /work into it when the run ends.",
    )
    requirements_field = Field(
        default=None,
        description="Packages to install before the program runs, as pip requirement specifiers, "
        "e.g. ['six', 'pandas>=2,<3']. The install is reported apart, in `install`.",
    )

    async def run_python(
        code: Annotated[str, Field(description="Python source code, run as /work/main.py.")],
        ctx: Context,
        stdin: Annotated[str | None, stdin_field] = None,
        timeout_s: Annotated[float | None, timeout_field] = None,
        requirements: Annotated[list[str] | None, requirements_field] = None,
        image: Annotated[str | None, image_field] = None,
        workspace: Annotated[str | None, workspace_field] = None,
        return_last_expression: Annotated[
            bool,
            Field(
                description="When the code ends with an expression, return its repr() as "
                "return_value, as a notebook cell shows it (printing is unchanged)."
            ),
        ] = True,
        background: Annotated[bool, background_field] = False,
        keep_state: Annotated[
            bool,
            Field(
                description="In a workspace: start with the global names (variables, functions, "
                "classes, imports) earlier calls kept, and keep this call's for the next, as a "
                "notebook does; every call still runs in a fresh container. The result's `state` "
                "lists what was kept and what could not be (open files, generators, ...)."
            ),
        ] = True,
    ) -> Annotated[CallToolResult, RunAnswer]:
        return await calls.run(
            "run_python",
            ctx,
            lambda: RunRequest(
                files=[ProjectFile(path="main.py", content=code)],
                stdin=stdin,
                limits=LimitRequest(timeout_s=timeout_s),
                requirements=requirements or [],
                profile=image,
                workspace=workspace,
                notebook=True,
                return_last_expression=return_last_expression,
                background=background,
                keep_state=keep_state if workspace is not None else None,
            ),
            background,
        )

    async def run_project(
        files: Annotated[
            list[ProjectFile],
            Field(
                min_length=1,
                description="Files to place under /work, e.g. [{'path': 'main.py', 'content': "
                "'import util'}, {'path': 'util.py', 'content': '...'}]. Binary files: encoding "
                "'base64'.",
            ),
        ],
        ctx: Context,
        entrypoint: Annotated[
            str, Field(description="The file to run with python3; one of the files' paths.")
        ] = "main.py",
        args: Annotated[list[str] | None, Field(description="Command-line arguments (sys.argv[1:]).")] = None,
        stdin: Annotated[str | None, stdin_field] = None,
        env: Annotated[
            dict[str, str] | None, Field(description="Extra environment variables for the program.")
        ] = None,
        timeout_s: Annotated[float | None, timeout_field] = None,
        requirements: Annotated[list[str] | None, requirements_field] = None,
        image: Annotated[str | None, image_field] = None,
        workspace: Annotated[str | None, workspace_field] = None,
        background: Annotated[bool, background_field] = False,
    ) -> Annotated[CallToolResult, RunAnswer]:
        return await calls.run(
            "run_project",
            ctx,
            lambda: RunRequest(
                files=files,
                entrypoint=entrypoint,
                args=args or [],
                stdin=stdin,
                env=env or {},
                limits=LimitRequest(timeout_s=timeout_s),
                requirements=requirements or [],
                profile=image,
                workspace=workspace,
                background=background,
            ),
            background,
        )

    async def run_batch(
        items: Annotated[
            list[BatchItem],
            Field(
                min_length=1,
                max_length=settings.server.max_batch,
                description="The programs, each a snippet ({'code': ...}, as run_python) or a project "
                "({'files': [...], 'entrypoint': ...}, as run_project), with its own stdin, timeout_s, "
                "requirements and image.",
            ),
        ],
        ctx: Context,
    ) -> Annotated[CallToolResult, BatchResult]:
        answer = await calls.batch(ctx, items)
        return CallToolResult(
            content=[TextContent(type="text", text=batch_summary(answer))],
            structured_content=answer.model_dump(mode="json"),
        )

    server.add_tool(
        run_python,
        title="Run Python",
        description="Run a Python snippet and return its output. Like a notebook cell, a last "
        "expression comes back as return_value, and plt.show() saves the open matplotlib figures "
        "as /work/figure_N.png, which come back as images. " + environment,
        annotations=ANNOTATIONS,
        meta=TOOL_META,
    )
    server.add_tool(
        run_project,
        title="Run a Python project",
        description="Write several files (modules, data) under /work and run one of them; a "
        "top-level requirements.txt among them is installed like `requirements`. " + environment,
        annotations=ANNOTATIONS,
        meta=TOOL_META,
    )
    server.add_tool(
        run_batch,
        title="Run many Python programs",
        description=f"Run up to {settings.server.max_batch} independent programs in one call, side by "
        "side, each in a fresh sandbox of its own (no workspaces, no background): one result per item "
        "in order (or why it did not run), and how many passed, failed and hit which limits. For test "
        "cases, reward checks and other many small programs. " + environment,
        annotations=ANNOTATIONS,
    )


class ToolCall:
    """Runs one tool call: validation, the client's start rate, the run (within the client's fair
    share: see ``clients.caller_of``; in the background when asked), the audit record and the
    metrics."""

    def __init__(
        self,
        sandbox: Sandbox,
        channel: Channel,
        rate: StartRate,
        audit: AuditLog | None,
        metrics: Metrics,
        background: BackgroundRuns,
    ):
        self.sandbox = sandbox
        self.channel = channel
        self.rate = rate
        self.audit = audit
        self.metrics = metrics
        self.background = background
        server = sandbox.settings.server
        self.share = Share(server.max_runs_per_client, server.max_queued_per_client)

    async def run(
        self, tool: str, ctx: Context, make_request: _RequestFactory, background: bool = False
    ) -> CallToolResult:
        """The call's result; for a background run, its status at once (the run goes on)."""
        caller = caller_of(ctx, self.channel, self.share)
        try:
            request = self._validated(make_request)
        except SandboxError as exc:
            raise self._refused(tool, caller.id, None, exc) from None
        if background:
            record = self.start(tool, caller, request)
            return status_answer(self.background.status(record.id, caller.id), self.background)
        progress = RunProgress(_sender(ctx), request.limits.timeout_s or self._default_timeout())
        output = LiveOutput()
        refusal: SandboxError | None = None
        async with anyio.create_task_group() as live:
            live.start_soon(progress.follow, output)
            try:
                result = await self.execute(tool, caller, request, progress.stage, output.feed)
            except SandboxError as exc:
                refusal = exc
            finally:
                live.cancel_scope.cancel()
        if refusal is not None:
            raise ToolError(describe(refusal))
        await progress.finished(output)
        return tool_result(result, self.sandbox.settings.results, apps=client_supports_apps(ctx))

    async def batch(self, ctx: Context, items: list[BatchItem]) -> BatchResult:
        """Every item run as its own call would be (audit, metrics, the client's start rate), side
        by side within the caller's share of the slots; progress says how many are done."""
        caller = caller_of(ctx, self.channel, self.share)
        slots = self.sandbox.settings.engine.max_concurrent_runs
        parallel = min(slots, caller.share.running) if caller.share else slots
        send = _sender(ctx)

        async def run_one(request: RunRequest) -> RunResult:
            if request.workspace is not None or request.background:
                raise Refused("a batch item cannot use a workspace or run in the background")
            return await self.execute("run_batch", caller, request, no_progress, _no_output)

        async def on_done(done: int, total: int) -> None:
            await send(done, total, f"{done} of {total} programs done")

        return await run_all(items, run_one, parallel, on_done)

    def start(self, tool: str, caller: Caller, request: RunRequest) -> RunRecord:
        """Start the call as a background run. The request, the client's start rate and the
        caps are checked first, so a refusal comes back at once rather than as a failed run (a
        server whose slots and queue are full fails the run, and run_status says so)."""
        try:
            self.sandbox.prepare(request)
            self.rate.count(caller.id)
        except SandboxError as exc:
            raise self._refused(tool, caller.id, request, exc) from None

        async def work(on_output: OutputCallback, on_progress: ProgressCallback) -> RunResult:
            return await self.execute(tool, caller, request, on_progress, on_output, rate_counted=True)

        try:
            return self.background.start(
                caller.id, tool, request.limits.timeout_s or self._default_timeout(), work
            )
        except RunError as exc:
            self.rate.refund(caller.id)  # it never started
            raise ToolError(describe(exc)) from None

    async def execute(
        self,
        tool: str,
        caller: Caller,
        request: RunRequest,
        on_progress: ProgressCallback,
        on_output: OutputCallback,
        rate_counted: bool = False,
    ) -> RunResult:
        """The run itself, on the record: audit and metrics; a refusal raises ``SandboxError``.
        ``rate_counted``: the client's start rate already counted it (a background run's start)."""
        client = caller.id
        started = time.monotonic()
        try:
            if not rate_counted:
                self.rate.count(client)
            self._record("started", tool, client, request, None, None)
            try:
                result = await self.sandbox.run(request, on_progress, caller, on_output)
            except Busy:
                self.rate.refund(client)  # it never ran
                raise
        except SandboxError as exc:
            self._refused(tool, client, request, exc)
            raise
        except BaseException as exc:  # cancelled by the client, or a bug: still on the record
            self._record("ended", tool, client, request, None, f"interrupted: {type(exc).__name__}")
            self.metrics.record_error(tool, exc)
            raise
        self._record("finished", tool, client, request, result, None)
        self.metrics.record_result(tool, result, time.monotonic() - started)
        return result

    def _refused(self, tool: str, client: str, request: RunRequest | None, exc: SandboxError) -> ToolError:
        """A refusal on the record (audit, metrics), as the tool error that tells the client."""
        self._record("refused", tool, client, request, None, describe(exc))
        self.metrics.record_error(tool, exc)
        return ToolError(describe(exc))

    def _default_timeout(self) -> float:
        return self.sandbox.settings.limits.timeout_s

    @staticmethod
    def _validated(make_request: _RequestFactory) -> RunRequest:
        try:
            return make_request()
        except ValidationError as exc:
            raise Refused(describe_invalid(exc)) from None

    def _record(
        self,
        event: AuditEvent,
        tool: str,
        client: str,
        request: RunRequest | None,
        result: RunResult | None,
        refusal: str | None,
    ) -> None:
        if self.audit is not None:
            self.audit.record(
                event=event,
                transport=self.channel,
                client=client,
                tool=tool,
                request=request,
                result=result,
                refusal=refusal,
            )


def _no_output(stream: int, data: bytes) -> None:
    """A batch item's output comes back in its result only."""


def _sender(ctx: Context) -> Send:
    async def send(progress: float, total: float, message: str) -> None:
        await ctx.report_progress(progress, total, message)

    return send
