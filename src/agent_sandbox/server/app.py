"""The MCP server: ``run_python`` and ``run_project`` tools and the ``sandbox://config`` resource.

It only translates between MCP and ``Sandbox``: refusals and infrastructure failures become tool
errors whose message tells the model what to change; a program that fails is a successful call.
"""

# No `from __future__ import annotations`: the SDK evaluates the tools' annotations, which
# refer to Field objects local to build_server.
import json
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field, ValidationError

from agent_sandbox.admission import Busy, Caller, Share
from agent_sandbox.engine.docker import EngineError, ProgressCallback
from agent_sandbox.images.profiles import get_profile
from agent_sandbox.models import LimitRequest, ProjectFile, RunRequest, RunResult
from agent_sandbox.sandbox import RequestError, Sandbox
from agent_sandbox.server.audit import AuditLog
from agent_sandbox.server.content import tool_content
from agent_sandbox.server.metrics import Metrics
from agent_sandbox.server.ops import add_routes
from agent_sandbox.server.start_rate import RateLimited, StartRate
from agent_sandbox.server.workspace_tools import add_workspace_tools

SERVER_NAME = "agent-sandbox"
CONFIG_URI = "sandbox://config"
_RequestFactory = Callable[[], RunRequest]
_STAGES = {"resolving": 0, "queued": 1, "starting": 2, "installing": 3, "running": 3}  # one or the other
_FINISHED = max(_STAGES.values()) + 1
_STAGE_MESSAGES = {
    "resolving": "fetching the requirements' wheels on the host",
    "queued": "queued",  # with how many wait ahead: "queued, 2 ahead"
    "starting": "creating a fresh container",
    "installing": "installing the requirements in the sandbox, then running the program",
    "running": "the program is running",
}
ANNOTATIONS = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)


def build_server(sandbox: Sandbox, transport: str = "in-process") -> MCPServer:
    """An ``MCPServer`` whose tools run code through ``sandbox``; over HTTP it also serves
    ``/healthz`` and ``/metrics``."""
    settings = sandbox.settings
    limits = settings.limits
    results = settings.results
    metrics = Metrics(sandbox)
    calls = _Calls(
        sandbox,
        transport,
        StartRate(settings.server.runs_per_minute_per_client),
        AuditLog(Path(settings.server.audit_log)) if settings.server.audit_log else None,
        metrics,
    )
    network = (
        f"only the operator's Docker network {settings.engine.network!r}"
        if settings.engine.network
        else "NO network access"
    )
    profiles = "; ".join(get_profile(name).describe() for name in settings.engine.profiles)
    packages = settings.packages
    if not packages.enabled:
        requirements_help = "Installing other packages is turned off on this server."
    else:
        allowed = f" Allowed packages: {', '.join(packages.allow)}." if packages.allow else ""
        requirements_help = (
            "Other packages: list them in `requirements` (e.g. ['six', 'pandas>=2']; wheels "
            "only, fetched by the host, installed offline into /packages before the program "
            f"starts, at most {packages.max_wheels} wheels / {packages.max_total_mib} MiB)." + allowed
        )
    shared_memory = (
        f", with {limits.shm_mib} MiB of shared memory (/dev/shm) for multiprocessing"
        if limits.shm_mib
        else "; there is no shared memory (/dev/shm): multiprocessing cannot work, use threads"
    )
    environment = (
        f"Runs in a fresh, single-use Linux container with CPython 3.11, {network}, as an "
        f"unprivileged user. Image profiles (`image`; default '{settings.engine.profile}'): "
        f"{profiles}. {requirements_help} The working "
        f"folder is /work ({limits.work_mib} MiB, writable; /tmp too, {limits.tmp_mib} MiB)"
        f"{shared_memory}; everything else is read-only and nothing persists after the call. Limits: "
        f"{limits.memory_mib} MiB of memory (files in /work, /tmp and /dev/shm count), {limits.cpus:g} CPU, "
        f"{limits.pids} processes and threads, {limits.timeout_s:g} s by default (timeout_s up to "
        f"{limits.max_timeout_s:g} s), the first {limits.output_capture_kib} KiB of stdout and of "
        f"stderr kept. The result has exit_code, stdout, stderr, timed_out, oom_killed, "
        f"violations and notes that say which limit was hit and what to change, error (the "
        f"uncaught exception's type, message and line) and artifacts: files the program wrote "
        f"under /work come back (images as pictures you can see; up to {results.max_artifacts} "
        f"files, {results.max_artifact_kib} KiB). A program that fails is not a tool error: read "
        f"exit_code, error and stderr."
    )
    server = MCPServer(
        SERVER_NAME,
        title="Python sandbox",
        instructions=(
            "Run Python code safely. Use run_python for a snippet and run_project for several "
            "files. " + environment
        ),
        version=_version(),
    )

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

    if settings.workspaces.enabled:
        add_workspace_tools(server, sandbox.workspaces, lambda ctx: _client_of(ctx, transport))
    add_routes(server, sandbox, metrics)

    @server.resource(
        CONFIG_URI,
        name="sandbox-config",
        title="Sandbox configuration",
        description="The image profiles, package policy and limits every run gets, and what a "
        "caller may send.",
        mime_type="application/json",
    )
    def config() -> str:
        return json.dumps(
            {
                "profile": settings.engine.profile,
                "profiles": {
                    name: {"image": settings.engine.image_of(name), "packages": get_profile(name).packages()}
                    for name in settings.engine.profiles
                },
                "packages": settings.packages.model_dump(exclude={"cache_dir"}),
                "network": settings.engine.network or "none",
                "warm_pool_size": settings.engine.pool_size,
                "limits": settings.limits.model_dump(),
                "files": settings.files.model_dump(),
                "max_concurrent_runs": settings.engine.max_concurrent_runs,
                "max_queued_runs": settings.engine.max_queued_runs,
            },
            indent=2,
        )

    return server


class _Calls:
    """Runs one tool call: validation, the client's start rate, the run (within the client's fair
    share: see ``_caller_of``), the audit record and the metrics."""

    def __init__(
        self,
        sandbox: Sandbox,
        transport: str,
        rate: StartRate,
        audit: AuditLog | None,
        metrics: Metrics,
    ):
        self.sandbox = sandbox
        self.transport = transport
        self.rate = rate
        self.audit = audit
        self.metrics = metrics
        server = sandbox.settings.server
        self.share = Share(server.max_runs_per_client, server.max_queued_per_client)

    async def run(self, tool: str, ctx: Context, make_request: _RequestFactory) -> CallToolResult:
        caller = _caller_of(ctx, self.transport, self.share)
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
        except (RequestError, RateLimited, Busy, EngineError) as exc:
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
            raise RequestError(_describe(exc)) from None

    def _record(
        self,
        event: str,
        tool: str,
        client: str,
        request: RunRequest | None,
        result: RunResult | None,
        refusal: str | None,
    ) -> None:
        if self.audit is not None:
            self.audit.record(
                event=event,
                transport=self.transport,
                client=client,
                tool=tool,
                request=request,
                result=result,
                refusal=refusal,
            )


def _tool_error_message(exc: Exception) -> str:
    if isinstance(exc, EngineError):
        return f"the sandbox is unavailable: {exc}"
    if isinstance(exc, Busy):
        return str(exc)
    if isinstance(exc, RateLimited):
        return f"too many runs: {exc}"
    return f"refused: {exc}"


def _progress_reporter(ctx: Context) -> ProgressCallback:
    async def report(stage: str, detail: str = "") -> None:
        message = _STAGE_MESSAGES[stage] + (f", {detail}" if detail else "")
        await ctx.report_progress(_STAGES[stage], _FINISHED, message)

    return report


def _caller_of(ctx: Context, transport: str, share: Share) -> Caller:
    """The caller, with its fair ``share`` of the server; the one client of a stdio (or
    in-process) server has the whole server, so an agent's parallel calls queue behind its own."""
    client = _client_of(ctx, transport)
    return Caller(client, None if client.startswith("stdio") else share)


def _client_of(ctx: Context, transport: str) -> str:
    """Who is calling, for fair shares, workspaces and the audit log: an MCP session the SDK has
    checked (SSE's session_id, Streamable HTTP's Mcp-Session-Id), else the peer's address, else
    the one stdio client, named by the host application it says it is (clientInfo.name), so two
    hosts of one user (a desktop app and an IDE) each keep their own workspaces. A header the SDK
    does not check would let a client mint itself new shares."""
    request = ctx.request_context.request
    if request is None or ctx.headers is None:
        params = ctx.session.client_params
        name = params.client_info.name if params is not None else ""
        return f"stdio:{name}" if name else "stdio"
    if transport == "sse":
        session = request.query_params.get("session_id")
    else:
        session = ctx.headers.get("mcp-session-id")
    if session:
        return f"session:{session}"
    peer = getattr(request, "client", None)
    return f"address:{peer.host}" if peer is not None else "http"


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as one line naming each field."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "invalid arguments: " + "; ".join(problems)


def _version() -> str:
    try:
        return version("agent-sandbox")
    except PackageNotFoundError:
        return "0"
