"""Faults around a run: the engine dies, the server is killed, the client goes away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from agent_sandbox.config import Settings
from agent_sandbox.engine.docker import LABEL, DockerEngine
from agent_sandbox.sandbox import Sandbox
from tests.helpers import owned_by, stdio_server

from .conftest import ROOT, serving

pytestmark = pytest.mark.anyio
DOCKER_PID = Path("/var/run/docker.pid")
SLOW = "import time\nprint('started', flush=True)\ntime.sleep(60)"


def our_containers(engine: DockerEngine, pid: int | None = None) -> list[Any]:
    label = owned_by(pid)["label"] if pid else LABEL
    return list(engine.client.containers.list(all=True, sparse=True, filters={"label": label}))


async def wait_until(condition: Any, seconds: float, what: str) -> None:
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.1)


@pytest.mark.skipif(os.geteuid() != 0 or not DOCKER_PID.exists(), reason="needs an engine this test may kill")
async def test_the_engine_dying_mid_run_is_a_clear_error_and_the_server_recovers(
    engine: DockerEngine,
) -> None:
    with serving("streamable-http", env={"AGENT_SANDBOX_ENGINE__POOL_SIZE": "0"}) as (url, process, _):
        async with Client(f"{url}/mcp") as client:
            results: dict[str, Any] = {}

            async def slow_call() -> None:
                results["during"] = await client.call_tool("run_python", {"code": SLOW})

            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(slow_call)
                    await wait_until(
                        lambda: [c for c in our_containers(engine, process.pid) if c.status == "running"],
                        30,
                        "the run to start",
                    )
                    await anyio.sleep(0.5)  # the program is running
                    os.kill(int(DOCKER_PID.read_text()), signal.SIGKILL)
                assert results["during"].is_error
                assert "the sandbox is unavailable" in results["during"].content[0].text
                assert "Docker engine went away during the run" in results["during"].content[0].text

                while_down = await client.call_tool("run_python", {"code": "print(1)"})
                assert while_down.is_error
                assert "no Docker engine answers" in while_down.content[0].text
            finally:
                subprocess.run(["bash", str(ROOT / "scripts" / "ensure-engine.sh")], check=True)

            after = await client.call_tool("run_python", {"code": "print('back')"})
            assert after.is_error is False, after.content
            assert after.structured_content is not None
            assert after.structured_content["stdout"] == "back\n"
        assert process.poll() is None, "the server must keep serving"
    await wait_until(lambda: not our_containers(engine, process.pid), 30, "cleanup")


def test_a_server_killed_mid_run_has_its_orphan_removed_at_the_next_start(engine: DockerEngine) -> None:
    server = stdio_server({"AGENT_SANDBOX_ENGINE__POOL_SIZE": "0"})

    try:
        _send_initialize_and_call(server, SLOW)
        deadline = time.monotonic() + 30
        while not [c for c in our_containers(engine, server.pid) if c.status == "running"]:
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    assert len(our_containers(engine, server.pid)) == 1  # the orphan
    Sandbox(Settings(), engine).start()
    assert our_containers(engine, server.pid) == []


def _send_initialize_and_call(server: subprocess.Popen[bytes], code: str) -> None:
    """Speak just enough MCP (2025-11-25 handshake) over the server's stdin to start a call."""
    assert server.stdin is not None
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "run_python", "arguments": {"code": code}}},
    ]  # fmt: skip
    for message in messages:
        server.stdin.write(json.dumps(message).encode() + b"\n")
    server.stdin.flush()


CLIENT = """
import anyio, sys
from mcp import Client
from mcp.client.sse import sse_client

async def main():
    transport, url = sys.argv[1], sys.argv[2]
    target = sse_client(url + "/sse") if transport == "sse" else url + "/mcp"
    async with Client(target, mode="legacy" if transport == "sse" else "auto") as client:
        await client.call_tool("run_python", {"code": "import time\\ntime.sleep(60)"})

anyio.run(main)
"""


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_a_client_that_disconnects_mid_run_has_its_container_removed(
    engine: DockerEngine, transport: str
) -> None:
    with serving(transport, env={"AGENT_SANDBOX_ENGINE__POOL_SIZE": "0"}) as (url, process, _):
        client = subprocess.Popen([sys.executable, "-c", CLIENT, transport, url], cwd=ROOT)
        try:
            await wait_until(lambda: our_containers(engine, process.pid), 30, "the run to start")
        finally:
            client.kill()  # gone without a word: no cancellation sent
            client.wait()
        await wait_until(lambda: not our_containers(engine, process.pid), 10, "the container to go")
        assert process.poll() is None


async def test_a_stdio_client_that_goes_away_ends_the_server_and_its_runs(engine: DockerEngine) -> None:
    server = stdio_server()
    _send_initialize_and_call(server, SLOW)
    await wait_until(
        lambda: [c for c in our_containers(engine, server.pid) if c.status == "running"],
        30,
        "the run to start",
    )
    assert server.stdin is not None
    server.stdin.close()  # the client is gone
    assert server.wait(timeout=30) == 0
    assert our_containers(engine, server.pid) == []
