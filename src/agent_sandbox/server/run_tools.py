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

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field, ValidationError

from agent_sandbox.admission import Share
from agent_sandbox.engine.base import ProgressCallback, Stage
from agent_sandbox.errors import Busy, EngineError, RateLimited, Refused, SandboxError
from agent_sandbox.models import LimitRequest, ProjectFile, RunRequest, RunResult
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server.audit import AuditEvent, AuditLog
from agent_sandbox.server.clients import Channel, caller_of
from agent_sandbox.server.content import tool_content
from agent_sandbox.server.environment import describe_environment
from agent_sandbox.server.metrics import Metrics
from agent_sandbox.server.start_rate import StartRate

_RequestFactory = Callable[[], RunRequest]
# Progress as MCP reports it: installing and running are the same step (one or the other).
_STEPS: dict[Stage, int] = {"resolving": 0, "queued": 1, "starting": 2, "installing": 3, "running": 3}
_FINISHED = max(_STEPS.values()) + 1
STAGE_MESSAGES: dict[Stage, str] = {
    "resolving": "fetching the requirements' wheels on the host",
    "queued": "queued",  # with how many wait ahead: "queued, 2 ahead"
    "starting": "creating a fresh container",
    "installing": "installing the requirements in the sandbox, then running the program",
    "running": "the program is running",
}
ANNOTATIONS = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)


def add_run_tools(server: MCPServer, sandbox: Sandbox, channel: Channel, metrics: Metrics) -> None:
    """Register ``run_python`` and ``run_project`` on ``server``, running through ``sandbox``."""
    settings = sandbox.settings
    limits = settings.limits
    calls = ToolCall(
        sandbox,
        channel,
        StartRate(settings.server.runs_per_minute_per_client),
        AuditLog(Path(settings.server.audit_log)) if settings.server.audit_log else None,
        metrics,
    )
    environment = describe_environment(settings)
    timeout_field = Field(
        default=None,
        gt=0,
        description=f"Seconds before the program is stopped (default {limits.timeout_s:g}, "
        f"at most {limits.max_timeout_s:g}). Output printed before a stop is kept.",
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
    ) -> Annotated[CallToolResult, RunResult]:
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
            ),
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
    ) -> Annotated[CallToolResult, RunResult]:
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
            ),
        )

    server.add_tool(
        run_python,
        title="Run Python",
        description="Run a Python snippet and return its output. Like a notebook cell, a last "
        "expression comes back as return_value, and plt.show() saves the open matplotlib figures "
        "as /work/figure_N.png, which come back as images. " + environment,
        annotations=ANNOTATIONS,
    )
    server.add_tool(
        run_project,
        title="Run a Python project",
        description="Write several files (modules, data) under /work and run one of them; a "
        "top-level requirements.txt among them is installed like `requirements`. " + environment,
        annotations=ANNOTATIONS,
    )


class ToolCall:
    """Runs one tool call: validation, the client's start rate, the run (within the client's fair
    share: see ``clients.caller_of``), the audit record and the metrics."""

    def __init__(
        self,
        sandbox: Sandbox,
        channel: Channel,
        rate: StartRate,
        audit: AuditLog | None,
        metrics: Metrics,
    ):
        self.sandbox = sandbox
        self.channel = channel
        self.rate = rate
        self.audit = audit
        self.metrics = metrics
        server = sandbox.settings.server
        self.share = Share(server.max_runs_per_client, server.max_queued_per_client)

    async def run(self, tool: str, ctx: Context, make_request: _RequestFactory) -> CallToolResult:
        caller = caller_of(ctx, self.channel, self.share)
        client = caller.id
        request: RunRequest | None = None
        started = time.monotonic()
        try:
            request = self._validated(make_request)
            self.rate.count(client)
            self._record("started", tool, client, request, None, None)
            try:
                result = await self.sandbox.run(request, _progress_reporter(ctx), caller)
            except Busy:
                self.rate.refund(client)  # it never ran
                raise
        except SandboxError as exc:
            message = _tool_error_message(exc)
            self._record("refused", tool, client, request, None, message)
            self.metrics.record_error(tool, exc)
            raise ToolError(message) from None
        except BaseException as exc:  # cancelled by the client, or a bug: still on the record
            self._record("ended", tool, client, request, None, f"interrupted: {type(exc).__name__}")
            self.metrics.record_error(tool, exc)
            raise
        self._record("finished", tool, client, request, result, None)
        self.metrics.record_result(tool, result, time.monotonic() - started)
        await ctx.report_progress(_FINISHED, _FINISHED, "finished")
        return CallToolResult(
            content=tool_content(result, self.sandbox.settings.results),
            structured_content=result.model_dump(mode="json"),
        )

    @staticmethod
    def _validated(make_request: _RequestFactory) -> RunRequest:
        try:
            return make_request()
        except ValidationError as exc:
            raise Refused(_describe(exc)) from None

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


def _tool_error_message(exc: SandboxError) -> str:
    if isinstance(exc, EngineError):
        return f"the sandbox is unavailable: {exc}"
    if isinstance(exc, Busy):
        return str(exc)
    if isinstance(exc, RateLimited):
        return f"too many runs: {exc}"
    return f"refused: {exc}"


def _progress_reporter(ctx: Context) -> ProgressCallback:
    async def report(stage: Stage, detail: str = "") -> None:
        message = STAGE_MESSAGES[stage] + (f", {detail}" if detail else "")
        await ctx.report_progress(_STEPS[stage], _FINISHED, message)

    return report


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as one line naming each field."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "invalid arguments: " + "; ".join(problems)
