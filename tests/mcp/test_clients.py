"""Every client generation against the real server: the `mcp` Python SDK 2.x (the server's own) and
1.x (in .tools/venv-mcp1: the generation LangChain's MCP adapters pin), and the TypeScript SDK's
1.x `sdk` and 2.x `client` packages under Node 22 (.tools/mcp-clients). Each lists the tools and
calls run_python and run_project, over stdio and over Streamable HTTP, and prints what it saw as
one JSON document, including the protocol version it negotiated.

Each client runs as docs/clients.md shows it, and the protocol versions its table lists are the
ones measured here. `make client-venvs mcp-clients` installs what the clients need (`make test`
does that first).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from typing import Any

import pytest

from tests.helpers import TOOLS

from .conftest import ROOT, serving

PAGE = ROOT / "docs" / "clients.md"
STDIO = "stdio .venv/bin/agent-sandbox serve"
HTTP = "http http://127.0.0.1:8000/mcp"  # on a free port instead of 8000 here
SERVE_HTTP = ".venv/bin/agent-sandbox serve --transport streamable-http --port 8000"
# Each client as (interpreter, program); `make` target that installs the interpreter's environment.
NODE = ".tools/conformance/node_modules/.bin/node"
CLIENTS = {
    "mcp2": (".venv/bin/python", "tests/mcp/clients/mcp2_client.py", "venv"),
    "mcp1": (".tools/venv-mcp1/bin/python", "tests/mcp/clients/mcp1_client.py", "client-venvs"),
    "ts-sdk": (NODE, "tests/mcp/clients/matrix_client.mjs sdk", "mcp-clients"),
    "ts-client": (NODE, "tests/mcp/clients/matrix_client.mjs client", "mcp-clients"),
    "ts-client-auto": (NODE, "tests/mcp/clients/matrix_client.mjs client-auto", "mcp-clients"),
}
TRANSPORTS = {"stdio": STDIO, "streamable-http": HTTP}
# What each `make` target installs that a client needs beyond its interpreter.
INSTALLED = {
    "venv": ".venv/bin/agent-sandbox",
    "client-venvs": ".tools/venv-mcp1/.installed",
    "mcp-clients": ".tools/mcp-clients/node_modules/@modelcontextprotocol/client/package.json",
}


def command(client: str, transport: str) -> str:
    """The command docs/clients.md shows for this client over this transport."""
    interpreter, program, _ = CLIENTS[client]
    return f"{interpreter} {program} {TRANSPORTS[transport]}"


def table() -> dict[str, dict[str, str]]:
    """The client table of docs/clients.md: each row by its program (the cell's text without backticks)."""
    lines = [line for line in PAGE.read_text().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]
    ]
    return {row["program"].strip("`"): row for row in rows if row.get("program")}


def run(client: str, transport: str, url: str | None = None) -> dict[str, Any]:
    interpreter, _, target = CLIENTS[client]
    for needed in (interpreter, INSTALLED[target]):
        if not (ROOT / needed).exists():
            pytest.fail(f"{needed} is not there: run `make {target}`")
    shown = command(client, transport)
    argv = shlex.split(shown.replace("http://127.0.0.1:8000/mcp", url or ""))
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("client", CLIENTS)
def test_the_client_lists_the_tools_and_calls_both(client: str, transport: str) -> None:
    if transport == "stdio":
        seen = run(client, transport)
    else:
        with serving("streamable-http", argv=shlex.split(SERVE_HTTP.replace("8000", "{port}"))) as (
            base,
            _,
            _,
        ):
            seen = run(client, transport, f"{base}/mcp")

    assert seen["transport"] == ("stdio" if transport == "stdio" else "http")
    assert set(seen["tools"]) == TOOLS
    snippet = seen["run_python"]
    assert snippet["is_error"] is False
    assert snippet["structured"]["exit_code"] == 0
    assert snippet["structured"]["stdout"] == "42 (3, 11)\n"
    assert "--- stdout ---\n42 (3, 11)" in snippet["text"]
    project = seen["run_project"]
    assert project["is_error"] is False
    assert project["structured"]["exit_code"] == 0
    assert project["structured"]["stdout"] == "OVER THE WIRE!\n"
    assert "OVER THE WIRE!" in project["text"]

    # What docs/clients.md says of this client is what was measured.
    row = table()[CLIENTS[client][1]]
    assert row["SDK"] == f"`{seen['sdk']}`"
    column = "protocol, stdio" if transport == "stdio" else "protocol, Streamable HTTP"
    assert row[column] == seen["protocol_version"]
    shown = re.findall(r"^\S.*$", PAGE.read_text(), re.M)
    assert command(client, transport) in shown
    assert transport == "stdio" or SERVE_HTTP in shown


def test_the_page_shows_every_client_of_the_matrix() -> None:
    assert set(table()) == {program for _, program, _ in CLIENTS.values()}
