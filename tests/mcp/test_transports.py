"""The real server as a subprocess, over stdio, SSE and Streamable HTTP, calling both tools (over
stdio and Streamable HTTP on each backend: Docker, and the Kubernetes test cluster)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import docker
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client

from tests.helpers import TOOLS, Backend, owned_by

from .conftest import ROOT, serving

pytestmark = pytest.mark.anyio

PROJECT = {
    "files": [
        {"path": "main.py", "content": "import sys\nfrom util import shout\nprint(shout(sys.argv[1]))"},
        {"path": "util.py", "content": "def shout(word):\n    return word.upper() + '!'\n"},
    ],
    "args": ["over the wire"],
}


async def exercise(client: Client) -> None:
    """What every transport must do: list both tools, then run each and get the structured result."""
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    assert tools["run_python"].output_schema
    assert tools["run_project"].output_schema

    snippet = await client.call_tool("run_python", {"code": "import sys; print(sys.version_info[:2])"})
    assert snippet.is_error is False
    assert snippet.structured_content is not None
    assert snippet.structured_content["exit_code"] == 0
    assert snippet.structured_content["stdout"] == "(3, 11)\n"

    project = await client.call_tool("run_project", PROJECT)
    assert project.is_error is False
    assert project.structured_content is not None
    assert project.structured_content["stdout"] == "OVER THE WIRE!\n"

    refused = await client.call_tool("run_project", {"files": [{"path": "../x.py", "content": ""}]})
    assert refused.is_error is True


def stdio_parameters(env: dict[str, str] | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "agent_sandbox", "serve"],
        cwd=str(ROOT),
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_stdio(mode: str, backend: Backend) -> None:
    async with Client(stdio_parameters(backend.server_env()), mode=mode) as client:  # type: ignore[arg-type]
        await exercise(client)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_streamable_http(mode: str, backend: Backend) -> None:
    with serving("streamable-http", backend.server_env()) as (url, _, _):
        async with Client(f"{url}/mcp", mode=mode) as client:  # type: ignore[arg-type]
            await exercise(client)


async def test_sse() -> None:
    with serving("sse") as (url, _, _):
        transport: AbstractAsyncContextManager[Any] = sse_client(f"{url}/sse")
        async with Client(transport, mode="legacy") as client:
            await exercise(client)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


async def test_http_binds_to_loopback_only_and_logs_to_stderr_only() -> None:
    with serving("streamable-http") as (url, process, logs):
        port = int(url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
        async with Client(f"{url}/mcp") as client:
            await client.list_tools()
    stdout, stderr = logs.stdout, logs.stderr
    assert stdout == ""
    assert '"POST /mcp HTTP/1.1" 200' in stderr  # uvicorn's access log too
    assert "serving MCP over streamable-http" in stderr
    assert "profiles minimal" in stderr
    assert "Docker engine" in stderr
    assert process.returncode == 0


def test_stdio_keeps_stdout_for_protocol_messages_only() -> None:
    """Logs must never reach stdout on stdio: a client would read them as protocol garbage."""
    done = subprocess.run(
        [sys.executable, "-m", "agent_sandbox", "serve"],
        input="",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.stdout == ""
    assert "serving MCP over stdio" in done.stderr


def test_sigterm_stops_a_stdio_server_whose_client_keeps_stdin_open(
    docker_client: docker.DockerClient,
) -> None:
    """What `docker stop` does to a server image run with `docker run -i`: it must end at once,
    with its warm containers removed, not hang on the stdin reader until it is SIGKILLed."""
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent_sandbox", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
        )
        owner = owned_by(process.pid)
        try:
            deadline = time.monotonic() + 30
            while len(docker_client.containers.list(filters=owner)) < 2:  # the warm pool is up
                assert time.monotonic() < deadline, "the warm pool did not start"
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()
            process.wait()
        stderr.seek(0)
        assert b"stopping" in stderr.read()
    assert docker_client.containers.list(all=True, filters=owner) == []


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (
            {
                "AGENT_SANDBOX_ENGINE__IMAGE_REPOSITORY": "agent-sandbox-missing",
            },
            "agent-sandbox image build",
        ),
        ({"AGENT_SANDBOX_ENGINE__DOCKER_HOST": "unix:///nonexistent.sock"}, "scripts/ensure-engine.sh"),
        ({"AGENT_SANDBOX_LIMITS__MEMORY": "1"}, "unknown environment override"),
    ],
)
def test_start_up_fails_fast_with_a_fix(env: dict[str, str], words: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent_sandbox", "serve", "--transport", "streamable-http"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
    )
    assert done.returncode in (2, 3)
    assert words in done.stderr
