"""MCP Tasks against the real server over stdio, driven by real clients that speak them: the
official MCP Inspector's `mcpdo` (protocol 2025-11-25, and the 2026-07-28 extension) and the
official TypeScript SDK (2025-11-25). Both come from npm (`make mcp-clients`, with the Node 22
of the conformance suite).

The conformance suite this project runs (0.1.16) has no Tasks scenarios; its 0.2 alphas test
the 2026 extension only against fixture tools (greet, slow_compute, ...) this server does not
have, so they are not run here.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from .conftest import ROOT

NODE_BIN = ROOT / ".tools" / "conformance" / "node_modules" / ".bin"
CLIENTS = ROOT / ".tools" / "mcp-clients" / "node_modules"
TICKING = "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(1)\n"


def node_env(home: Path) -> dict[str, str]:
    if not (CLIENTS / ".bin" / "mcpdo").exists() or not (NODE_BIN / "node").exists():
        pytest.fail("the MCP clients are not installed: run `make mcp-clients`")
    daemon = home / "daemon"
    daemon.mkdir(mode=0o700, exist_ok=True)
    return {
        **os.environ,
        "PATH": f"{CLIENTS / '.bin'}{os.pathsep}{NODE_BIN}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),  # the Inspector's catalog, secrets and daemon stay in the test's folder
        "MCP_INSPECTOR_SECRET_STORE": "file",
        "MCP_INSPECTOR_DAEMON_DIR": str(daemon),
        "MCP_INSPECTOR_DAEMON_TOKEN": secrets.token_hex(16),
    }


class Mcpdo:
    """The Inspector's `mcpdo`, with its daemon in a folder of the test's own."""

    def __init__(self, home: Path, runs: Path):
        self.env = node_env(home)
        server = {
            "command": sys.executable,
            "args": ["-m", "agent_sandbox", "serve"],
            "cwd": str(ROOT),
            "env": {"AGENT_SANDBOX_RUNS__DIR": str(runs), "AGENT_SANDBOX_ENGINE__POOL_SIZE": "0"},
        }
        self.config = home / "mcp.json"
        self.config.write_text(
            json.dumps(
                {
                    "mcpServers": {
                        "sandbox": server,
                        "second": server,  # another connection: another server process, one store
                        "modern": {**server, "protocolEra": "modern"},
                    }
                }
            )
        )

    def __call__(self, *args: str, check: bool = True) -> Any:
        done = subprocess.run(
            ["mcpdo", "--format", "json", *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout or done.stderr)  # an error comes on stderr, as JSON too

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["mcpdo", "--format", "json", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # an error comes on stderr, as JSON too
            text=True,
        )

    def stop(self) -> None:
        subprocess.run(["mcpdo", "daemon", "stop"], env=self.env, capture_output=True, timeout=60)


@pytest.fixture
def mcpdo(tmp_path: Path) -> Iterator[Mcpdo]:
    client = Mcpdo(tmp_path, tmp_path / "runs")
    try:
        yield client
    finally:
        client.stop()  # its servers go with it


def test_the_inspector_runs_polls_lists_and_cancels_tasks(
    mcpdo: Mcpdo, docker_client: docker.DockerClient
) -> None:
    connected = mcpdo("--config", str(mcpdo.config), "connect", "sandbox")
    assert connected["protocolEra"] == "legacy"
    shown = mcpdo("connections/show", "sandbox")
    assert "tasks" in json.dumps(shown.get("capabilities", shown))
    tools = {tool["name"]: tool for tool in mcpdo("@sandbox", "tools/list")["tools"]}
    assert tools["run_python"]["execution"] == {"taskSupport": "optional"}
    assert "execution" not in tools["run_status"]

    # --task: a task-augmented tools/call, then tasks/get until it ends, then tasks/result.
    result = mcpdo("@sandbox", "tools/call", "run_python", json.dumps({"code": TICKING}), "--task")
    task_id = result["_meta"]["io.modelcontextprotocol/related-task"]["taskId"]
    assert result["structuredContent"]["stdout"] == "tick 0\ntick 1\ntick 2\n"
    task = mcpdo("@sandbox", "tasks/get", task_id)["task"]["raw"]
    assert task["status"] == "completed"
    assert task["statusMessage"] == "finished; last output: tick 2"
    again = mcpdo("@sandbox", "tasks/result", task_id)
    assert again["structuredContent"] == result["structuredContent"]

    # A task cancelled from a second connection (another server process on the same store).
    long = mcpdo.start(
        "@sandbox", "tools/call", "run_python", json.dumps({"code": "import time; time.sleep(60)"}), "--task"
    )
    mcpdo("--config", str(mcpdo.config), "connect", "second")
    deadline = time.monotonic() + 30
    while True:
        working = [t["taskId"] for t in mcpdo("@second", "tasks/list")["tasks"] if t["status"] == "working"]
        if working:
            break
        assert time.monotonic() < deadline, "the task did not show up"
        time.sleep(0.3)
    assert mcpdo("@second", "tasks/cancel", working[0]) == {"cancelled": True, "taskId": working[0]}
    out, _ = long.communicate(timeout=30)
    assert "cancelled" in json.loads(out)["error"]["message"]
    statuses = {t["taskId"]: t["status"] for t in mcpdo("@second", "tasks/list")["tasks"]}
    assert statuses == {task_id: "completed", working[0]: "cancelled"}
    refused = mcpdo("@second", "tasks/cancel", working[0], check=False)
    assert "already ended" in refused["error"]["message"]
    assert docker_client.containers.list(all=True, filters={"label": "agent-sandbox"}) == []


def test_the_inspector_on_protocol_2026_gets_its_run_as_a_task(mcpdo: Mcpdo, tmp_path: Path) -> None:
    connected = mcpdo("--config", str(mcpdo.config), "connect", "modern")
    assert connected["protocolEra"] == "modern"
    result = mcpdo("@modern", "tools/call", "run_python", json.dumps({"code": "print(6 * 7)"}))
    assert result["structuredContent"]["stdout"] == "42\n"
    # The server made it a task (the client declared the extension): it is a run in the store.
    runs = [json.loads((folder / "meta.json").read_text()) for folder in (tmp_path / "runs").iterdir()]
    assert [(run["tool"], run["state"]) for run in runs] == [("run_python", "finished")]


def test_the_typescript_sdk_creates_polls_collects_and_cancels_tasks(tmp_path: Path) -> None:
    done = subprocess.run(
        ["node", str(Path(__file__).parent / "clients" / "tasks_client.mjs"), sys.executable, str(CLIENTS)],
        cwd=ROOT,
        env={**node_env(tmp_path), "AGENT_SANDBOX_RUNS__DIR": str(tmp_path / "runs")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["capabilities"]["tasks"] == {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
    support = {tool["name"]: tool["execution"] for tool in seen["tools"]}
    assert support["run_project"] == {"taskSupport": "optional"}
    assert support["runs_list"] is None
    created = seen["created"]["task"]
    assert seen["created_ms"] < 1000
    assert created["status"] == "working"
    assert created["ttl"] == 86_400_000
    assert created["pollInterval"] == 1000
    polled = seen["polled"]
    assert polled[-1]["status"] == "completed"
    assert len(polled) >= 3
    assert any(p["statusMessage"].startswith("running; last output: tick") for p in polled)
    assert seen["listed"][0] == created["taskId"]
    result = seen["result"]
    assert result["structuredContent"]["stdout"].startswith("tick 0\n")
    assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": created["taskId"]}
    assert seen["cancelled"]["status"] == "cancelled"
    assert seen["cancelled_again"]["code"] == -32602
    assert seen["unknown"]["code"] == -32602
    assert "there is no run" in seen["unknown"]["message"]
