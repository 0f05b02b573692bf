"""Call both agent-sandbox tools through the official `mcp` client, over stdio, and print the results.

    .venv/bin/python examples/agents/python_client.py
    .venv/bin/python examples/agents/python_client.py --url http://127.0.0.1:8000/mcp   # Streamable HTTP

The stdio form starts the server itself (`agent-sandbox serve`), as Claude Desktop or an IDE does.
"""

from __future__ import annotations

import argparse
import json
import sys

import anyio
from mcp import Client, StdioServerParameters

PROJECT = [
    {"path": "main.py", "content": "from stats import mean\nprint('mean:', mean([3, 4, 8]))\n"},
    {"path": "stats.py", "content": "def mean(xs):\n    return sum(xs) / len(xs)\n"},
]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", help="A Streamable HTTP endpoint instead of starting a stdio server.")
    url = parser.parse_args().url
    server = url or StdioServerParameters(command=sys.executable, args=["-m", "agent_sandbox", "serve"])
    async with Client(server) as client:
        tools = await client.list_tools()
        print("tools:", ", ".join(tool.name for tool in tools.tools))

        result = await client.call_tool("run_python", {"code": "import math\nprint(math.factorial(20))"})
        print("\nrun_python text content:\n" + result.content[0].text)  # type: ignore[union-attr]

        result = await client.call_tool("run_project", {"files": PROJECT, "entrypoint": "main.py"})
        print("\nrun_project structured content:")
        print(json.dumps(result.structured_content, indent=2))


if __name__ == "__main__":
    anyio.run(main)
