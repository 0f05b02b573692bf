"""Serving the MCP app over stdio, SSE or Streamable HTTP, with every log line on stderr."""

from __future__ import annotations

import copy
from typing import Any, Literal

import uvicorn
from mcp.server.mcpserver import MCPServer
from uvicorn.config import LOGGING_CONFIG

Transport = Literal["stdio", "sse", "streamable-http"]
TRANSPORTS: tuple[Transport, ...] = ("stdio", "sse", "streamable-http")


def _logging_to_stderr() -> dict[str, Any]:
    """uvicorn's logging, but its access log goes to stderr too, like all our logs."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config


async def serve(server: MCPServer, transport: Transport, host: str, port: int) -> None:
    """Serve until the client goes away (stdio) or the process is told to stop (HTTP)."""
    if transport == "stdio":
        await server.run_stdio_async()
        return
    # The apps bind DNS-rebinding protection to ``host``; loopback by default.
    app = server.sse_app(host=host) if transport == "sse" else server.streamable_http_app(host=host)
    config = uvicorn.Config(app, host=host, port=port, log_config=_logging_to_stderr())
    await uvicorn.Server(config).serve()
