"""The MCP server: the tools that run code (run_tools.py), the workspace tools
(workspace_tools.py), the ``sandbox://config`` resource, the run viewer for hosts with MCP Apps
(viewer.py), and over HTTP ``/healthz`` and ``/metrics`` (ops.py). Everything goes through
``Sandbox``."""

# No `from __future__ import annotations`: the SDK evaluates the resource's annotations.
import json
from importlib.metadata import PackageNotFoundError, version

from mcp.server.mcpserver import MCPServer

from agent_sandbox.background import BackgroundRuns
from agent_sandbox.images.profiles import get_profile
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server.background_tools import add_background_tools
from agent_sandbox.server.clients import Channel, client_of
from agent_sandbox.server.environment import describe_environment
from agent_sandbox.server.metrics import Metrics
from agent_sandbox.server.ops import add_routes
from agent_sandbox.server.run_tools import add_run_tools
from agent_sandbox.server.tasks import RunTasks
from agent_sandbox.server.viewer import viewer_extension
from agent_sandbox.server.workspace_tools import add_workspace_tools

SERVER_NAME = "agent-sandbox"
CONFIG_URI = "sandbox://config"


def build_server(
    sandbox: Sandbox, transport: Channel = "in-process", background: BackgroundRuns | None = None
) -> MCPServer:
    """An ``MCPServer`` whose tools run code through ``sandbox``, served over ``transport``; over
    HTTP it also serves ``/healthz`` and ``/metrics``. Calls may run in the background when
    ``background`` is given and open (``async with``) for as long as the server serves."""
    settings = sandbox.settings
    metrics = Metrics(sandbox)
    # Without a lifetime for background runs, the tools still read the runs on disk.
    background = background or BackgroundRuns(settings.runs, settings.engine.max_concurrent_runs)
    tasks = RunTasks(background, transport, settings.results)
    server = MCPServer(
        SERVER_NAME,
        title="Python sandbox",
        instructions=(
            "Run Python code safely. Use run_python for a snippet and run_project for several "
            "files. " + describe_environment(settings)
        ),
        version=_version(),
        extensions=[tasks, viewer_extension()],
        middleware=[tasks.middleware],
    )
    add_run_tools(server, sandbox, transport, metrics, background)
    add_background_tools(server, background, lambda ctx: client_of(ctx, transport), settings.results)
    if settings.workspaces.enabled:
        add_workspace_tools(server, sandbox, lambda ctx: client_of(ctx, transport))
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
                    name: {
                        "image": settings.engine.image_of(name),
                        "python": get_profile(name).python,
                        "packages": get_profile(name).packages(),
                    }
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


def _version() -> str:
    try:
        return version("agent-sandbox")
    except PackageNotFoundError:
        return "0"
