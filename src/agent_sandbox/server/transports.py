"""Serving the MCP app over stdio, SSE or Streamable HTTP, with every log line on stderr."""

from __future__ import annotations

import copy
from typing import Any, Literal

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp
from uvicorn.config import LOGGING_CONFIG

from agent_sandbox.config import ServerSettings
from agent_sandbox.server.auth import require_token_off_loopback
from agent_sandbox.server.ops import guard

Transport = Literal["stdio", "sse", "streamable-http"]
TRANSPORTS: tuple[Transport, ...] = ("stdio", "sse", "streamable-http")


def _logging_to_stderr() -> dict[str, Any]:
    """uvicorn's logging, but its access log goes to stderr too, like all our logs."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config


async def serve(
    server: MCPServer, transport: Transport, host: str, port: int, settings: ServerSettings
) -> None:
    """Serve until the client goes away (stdio) or the process is told to stop (HTTP)."""
    if transport == "stdio":
        await server.run_stdio_async()
        return
    config = uvicorn.Config(
        http_app(server, transport, host, settings), host=host, port=port, log_config=_logging_to_stderr()
    )
    await uvicorn.Server(config).serve()


def http_app(server: MCPServer, transport: Transport, host: str, settings: ServerSettings) -> ASGIApp:
    """The ASGI app of an HTTP transport: body size capped, behind the token when there is one
    (``/healthz`` and ``/metrics`` have rules of their own, see ``ops``).

    The SDK binds its DNS-rebinding protection to ``host`` (loopback by default)."""
    require_token_off_loopback(host, settings.auth_token)
    body_cap = settings.max_request_kib * 1024
    if transport == "sse":
        app: ASGIApp = server.sse_app(host=host, max_request_body_size=body_cap)
    else:
        app = server.streamable_http_app(host=host, max_request_body_size=body_cap)
    return guard(app, settings.auth_token)
