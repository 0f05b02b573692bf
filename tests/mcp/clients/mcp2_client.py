"""A client of the 2.x `mcp` Python SDK (the server's own) against agent-sandbox: it lists the tools,
calls run_python and run_project, and prints what it saw as one JSON document for
tests/mcp/test_clients.py to check.

    .venv/bin/python mcp2_client.py stdio COMMAND [ARG...]   # starts the server itself
    .venv/bin/python mcp2_client.py http URL                 # a Streamable HTTP endpoint

`Client` in its default mode ("auto"), as an application would use it.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult

# The two calls every client of the matrix makes (matrix_client.mjs reads them too).
CALLS = json.loads((Path(__file__).parent / "calls.json").read_text())


def seen(result: CallToolResult) -> dict[str, Any]:
    text = [block.text for block in result.content if block.type == "text"]
    return {"is_error": result.is_error, "text": "\n".join(text), "structured": result.structured_content}


async def main(transport: str, target: list[str]) -> None:
    server = StdioServerParameters(command=target[0], args=target[1:]) if transport == "stdio" else target[0]
    async with Client(server) as client:
        tools = await client.list_tools()
        snippet = await client.call_tool("run_python", CALLS["run_python"])
        project = await client.call_tool("run_project", CALLS["run_project"])
        negotiated = client.protocol_version
    print(
        json.dumps(
            {
                "sdk": f"mcp {version('mcp')}",
                "transport": transport,
                "protocol_version": negotiated,
                "tools": [tool.name for tool in tools.tools],
                "run_python": seen(snippet),
                "run_project": seen(project),
            }
        )
    )


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2:])
