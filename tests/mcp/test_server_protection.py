"""The server's own protection: token, body cap, per-client shares, profile allowlist, network
switch and the audit log."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import docker
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from agent_sandbox.config import EngineSettings, ServerSettings, Settings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server import build_server
from agent_sandbox.server.audit import AuditLog
from tests.helpers import while_running

from .conftest import ROOT, serving

pytestmark = pytest.mark.anyio
TOKEN = "test-token-" + secrets.token_hex(8)
INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}  # fmt: skip
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


async def post(url: str, body: bytes, headers: dict[str, str]) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(url, content=body, headers={**MCP_HEADERS, **headers})


async def test_with_a_token_every_request_must_carry_it() -> None:
    with serving("streamable-http", env={"AGENT_SANDBOX_SERVER__AUTH_TOKEN": TOKEN}) as (url, _, _):
        body = json.dumps(INITIALIZE).encode()
        assert (await post(f"{url}/mcp", body, {})).status_code == 401
        wrong = await post(f"{url}/mcp", body, {"authorization": "Bearer " + "x" * len(TOKEN)})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        http = create_mcp_http_client(headers={"authorization": f"Bearer {TOKEN}"})
        async with http, Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
            result = await client.call_tool("run_python", {"code": "print('authorised')"})
        assert result.structured_content is not None
        assert result.structured_content["stdout"] == "authorised\n"


async def test_with_a_token_the_sse_transport_requires_it_too() -> None:
    with serving("sse", env={"AGENT_SANDBOX_SERVER__AUTH_TOKEN": TOKEN}) as (url, _, _):
        async with httpx2.AsyncClient(timeout=10) as http:
            stream = await http.get(f"{url}/sse")
            messages = await http.post(f"{url}/messages/?session_id=0", content=b"{}")
        assert (stream.status_code, messages.status_code) == (401, 401)
        transport = sse_client(f"{url}/sse", headers={"authorization": f"Bearer {TOKEN}"})
        async with Client(transport, mode="legacy") as client:
            result = await client.call_tool("run_python", {"code": "print('over sse')"})
        assert result.structured_content is not None
        assert result.structured_content["stdout"] == "over sse\n"


async def test_over_http_each_session_is_a_client_with_its_own_share() -> None:
    env = {
        "AGENT_SANDBOX_SERVER__MAX_RUNS_PER_CLIENT": "1",
        "AGENT_SANDBOX_SERVER__MAX_QUEUED_PER_CLIENT": "0",
    }
    with serving("streamable-http", env=env) as (url, _, _):
        async with (
            Client(f"{url}/mcp", mode="legacy") as first,
            Client(f"{url}/mcp", mode="legacy") as second,
            while_running(first, "import time; time.sleep(2)"),
        ):
            same_session = await first.call_tool("run_python", {"code": "print(1)"})
            other_session = await second.call_tool("run_python", {"code": "print(2)"})
    assert same_session.is_error
    assert "this client is busy: it has 1 runs in progress and 0 waiting" in same_session.content[0].text
    assert other_session.is_error is False
    assert other_session.structured_content is not None
    assert other_session.structured_content["stdout"] == "2\n"


def test_binding_off_loopback_without_a_token_is_refused() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent_sandbox",
            "serve",
            "--transport",
            "streamable-http",
            "--host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in done.stderr


async def test_a_request_body_over_the_cap_is_refused_and_the_server_keeps_serving() -> None:
    env = {
        "AGENT_SANDBOX_FILES__MAX_FILE_KIB": "64",
        "AGENT_SANDBOX_FILES__MAX_TOTAL_KIB": "64",
        "AGENT_SANDBOX_FILES__MAX_STDIN_KIB": "0",
        "AGENT_SANDBOX_SERVER__MAX_REQUEST_KIB": "160",
    }
    with serving("streamable-http", env=env) as (url, _, _):
        oversized = json.dumps({**INITIALIZE, "padding": "x" * 400_000}).encode()
        response = await post(f"{url}/mcp", oversized, {})
        assert response.status_code == 413
        async with Client(f"{url}/mcp") as client:
            result = await client.call_tool("run_python", {"code": "print('still serving')"})
        assert result.structured_content is not None
        assert result.structured_content["stdout"] == "still serving\n"


def sandbox_with(engine: DockerEngine, **server: Any) -> Sandbox:
    return Sandbox(Settings(engine=EngineSettings(pool_size=0), server=ServerSettings(**server)), engine)


async def test_the_one_client_of_a_stdio_server_is_not_held_to_the_http_share(engine: DockerEngine) -> None:
    """An agent's parallel calls all come from the one stdio client: its share is the server."""
    async with Client(build_server(sandbox_with(engine, max_runs_per_client=1))) as client:
        async with while_running(client, "import time; time.sleep(1)"):
            second = await client.call_tool("run_python", {"code": "print(2)"})
        assert second.is_error is False
        assert second.structured_content is not None
        assert second.structured_content["stdout"] == "2\n"


async def test_a_client_over_its_rate_gets_a_clear_error(engine: DockerEngine) -> None:
    async with Client(build_server(sandbox_with(engine, runs_per_minute_per_client=2))) as client:
        for _ in range(2):
            assert not (await client.call_tool("run_python", {"code": "print(1)"})).is_error
        third = await client.call_tool("run_python", {"code": "print(1)"})
    assert third.is_error
    assert "started 2 runs in the last minute" in third.content[0].text


async def test_the_audit_log_records_every_call_without_contents(
    engine: DockerEngine, tmp_path: Path
) -> None:
    audit = tmp_path / "audit" / "runs.jsonl"
    secret_content = "print('TOP-SECRET-CONTENT')"
    async with Client(build_server(sandbox_with(engine, audit_log=str(audit)))) as client:
        await client.call_tool("run_python", {"code": secret_content})
        await client.call_tool(
            "run_project", {"files": [{"path": "a.py", "content": "x"}], "entrypoint": "b.py"}
        )
        await client.call_tool(
            "run_python", {"code": "raise SystemExit(4)", "timeout_s": 5, "requirements": ["six"]}
        )
    text = audit.read_text()
    assert "TOP-SECRET-CONTENT" not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["event"] for r in records] == [
        "started",
        "finished",
        "started",
        "refused",
        "started",
        "finished",
    ]
    ok, refused, failed = records[1], records[3], records[5]
    assert ok["tool"] == "run_python"
    assert ok["client"] == "stdio:mcp"  # the host application, as its clientInfo names it
    assert ok["transport"] == "in-process"
    assert len(ok["files_sha256"]) == 64
    assert ok["exit_code"] == 0
    assert ok["limits"]["memory_mib"] == 1024
    assert ok["violations"] == []
    assert "refused" not in ok
    assert refused["tool"] == "run_project"
    assert "'b.py' is not one of the files sent" in refused["refused"]
    assert failed["exit_code"] == 4
    assert failed["limits"]["timeout_s"] == 5
    assert failed["requirements"] == ["six"]
    assert failed["wheels"][0].startswith("six-")
    assert ok["requirements"] == []
    assert oct(audit.stat().st_mode & 0o777) == "0o600"


async def test_a_cancelled_call_is_on_the_audit_record(engine: DockerEngine, tmp_path: Path) -> None:
    audit = tmp_path / "runs.jsonl"
    audit.write_text("")
    audit.chmod(0o644)  # an existing file is made owner-only too
    async with Client(build_server(sandbox_with(engine, audit_log=str(audit))), mode="legacy") as client:
        async with while_running(client, "import time\ntime.sleep(60)") as call:
            call.cancel_scope.cancel()
        with anyio.fail_after(10):  # the server learns of the cancellation a moment later
            while "interrupted: CancelledError" not in audit.read_text():
                await anyio.sleep(0.05)
        await client.call_tool("run_python", {"code": "print(1)"})  # the server carries on
    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert events == ["started", "ended", "started", "finished"]
    assert oct(audit.stat().st_mode & 0o777) == "0o600"


def test_the_audit_log_is_never_written_through_a_symbolic_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "runs.jsonl").symlink_to(target)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        AuditLog(tmp_path / "runs.jsonl")


async def test_the_network_is_off_and_no_tool_argument_turns_it_on(engine: DockerEngine) -> None:
    code = "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))"
    async with Client(build_server(sandbox_with(engine))) as client:
        result = await client.call_tool(
            "run_python", {"code": code, "network": "bridge", "network_mode": "host"}
        )
    assert result.is_error is False  # unknown arguments are ignored, never obeyed
    assert result.structured_content is not None
    assert result.structured_content["stdout"] == "['lo']\n"


async def test_an_operator_network_is_used_when_configured(
    engine: DockerEngine, docker_client: docker.DockerClient
) -> None:
    network = docker_client.networks.create(f"agent-sandbox-test-{secrets.token_hex(4)}", internal=True)
    try:
        settings = Settings(engine=EngineSettings(pool_size=0, network=network.name))
        code = "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))"
        async with Client(build_server(Sandbox(settings, engine))) as client:
            result = await client.call_tool("run_python", {"code": code})
        assert result.structured_content is not None
        assert result.structured_content["stdout"] == "['eth0', 'lo']\n"
    finally:
        network.remove()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"AGENT_SANDBOX_ENGINE__PROFILE": "datascience"}, "'datascience' is not in engine.profiles"),
        ({"AGENT_SANDBOX_ENGINE__PROFILES": '["python:3.12"]'}, "unknown image profile 'python:3.12'"),
        ({"AGENT_SANDBOX_ENGINE__IMAGE": "python:3.12"}, "unknown environment override"),
    ],
)
def test_only_the_repos_profiles_can_be_configured(override: dict[str, str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent_sandbox", "serve"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **override},
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr
