"""A client of the newest 1.x `mcp` Python SDK (the generation `langchain-mcp-adapters` pins) against
agent-sandbox: it lists the tools, calls run_python and run_project, and prints what it saw as one
JSON document for tests/mcp/test_clients.py to check.

    .tools/venv-mcp1/bin/python mcp1_client.py stdio COMMAND [ARG...]   # starts the server itself
    .tools/venv-mcp1/bin/python mcp1_client.py http URL                 # a Streamable HTTP endpoint

It runs in its own virtual environment (`make client-venvs`), which has no agent_sandbox: the
server's command comes on argv.
"""

from __future__ import annotations

import json
import sys
from contextlib import AsyncExitStack
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

# The two calls every client of the matrix makes (matrix_client.mjs reads them too).
CALLS = json.loads((Path(__file__).parent / "calls.json").read_text())


def seen(result: CallToolResult) -> dict[str, Any]:
    text = [block.text for block in result.content if block.type == "text"]
    return {"is_error": result.isError, "text": "\n".join(text), "structured": result.structuredContent}


async def main(transport: str, target: list[str]) -> None:
    async with AsyncExitStack() as stack:
        if transport == "stdio":
            params = StdioServerParameters(command=target[0], args=target[1:])
            read, write = await stack.enter_async_context(stdio_client(params))
        else:
            read, write, _ = await stack.enter_async_context(streamable_http_client(target[0]))
        session = await stack.enter_async_context(ClientSession(read, write))
        initialized = await session.initialize()
        tools = await session.list_tools()
        snippet = await session.call_tool("run_python", CALLS["run_python"])
        project = await session.call_tool("run_project", CALLS["run_project"])
    print(
        json.dumps(
            {
                "sdk": f"mcp {version('mcp')}",
                "transport": transport,
                "protocol_version": initialized.protocolVersion,
                "tools": [tool.name for tool in tools.tools],
                "run_python": seen(snippet),
                "run_project": seen(project),
            }
        )
    )


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2:])
