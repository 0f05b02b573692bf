"""The MCP layer on a scripted engine, in milliseconds: content, tool errors, progress stages,
the workspace tools, metrics and health. The same against the real engine and real transports
is in tests/mcp."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from agent_sandbox.config import EngineSettings, Settings, WorkspaceSettings
from agent_sandbox.engine.base import EngineHealth
from agent_sandbox.errors import EngineUnavailable, ImageMissing
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server import build_server
from agent_sandbox.server.progress import STAGE_MESSAGES
from agent_sandbox.server.transports import http_app
from tests.scripted_engine import ScriptedEngine, outcome

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings_in(tmp_path: Path) -> Settings:
    return Settings(engine=EngineSettings(pool_size=0), workspaces=WorkspaceSettings(dir=str(tmp_path)))


@pytest.fixture
async def connected(tmp_path: Path) -> AsyncIterator[tuple[Client, ScriptedEngine]]:
    engine = ScriptedEngine(
        outcome(stdout=b"\x1b[31mred\x1b[0m\n", return_value="42", files={"plot.txt": b"x"})
    )
    async with Client(build_server(Sandbox(settings_in(tmp_path), engine)), mode="legacy") as client:
        yield client, engine


async def test_a_run_comes_back_as_a_summary_and_structured_content(
    connected: tuple[Client, ScriptedEngine],
) -> None:
    client, engine = connected
    heard = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append(message)

    result = await client.call_tool("run_python", {"code": "1"}, progress_callback=on_progress)
    assert result.is_error is False
    assert result.structured_content is not None
    assert result.structured_content["stdout"] == "\x1b[31mred\x1b[0m\n"  # exact
    assert result.structured_content["return_value"] == "42"
    summary = result.content[0].text  # type: ignore[union-attr]
    assert "\\x1b[31mred" in summary  # escaped for a terminal
    assert "plot.txt" in summary
    output = "output: \\x1b[31mred\\x1b[0m\n"  # sent before "finished", its controls escaped
    assert heard == [STAGE_MESSAGES["starting"], STAGE_MESSAGES["running"], output, "finished"]
    assert engine.specs[0].results.notebook


async def test_refusals_and_engine_failures_are_tool_errors_that_say_what_to_do(tmp_path: Path) -> None:
    engine = ScriptedEngine(EngineUnavailable("no engine answers; start one"))
    async with Client(build_server(Sandbox(settings_in(tmp_path), engine))) as client:
        refused = await client.call_tool("run_project", {"files": [{"path": "/abs.py", "content": ""}]})
        failed = await client.call_tool("run_python", {"code": "print(1)"})
    assert refused.is_error
    assert "refused: files[0] ('/abs.py'): absolute paths are not allowed" in refused.content[0].text  # type: ignore[union-attr]
    assert failed.is_error
    assert "the sandbox is unavailable: no engine answers; start one" in failed.content[0].text  # type: ignore[union-attr]


async def test_the_workspace_tools_go_through_the_service(connected: tuple[Client, ScriptedEngine]) -> None:
    client, _ = connected
    created = await client.call_tool("workspace_create", {})
    assert created.structured_content is not None
    workspace = created.structured_content["workspace"]
    listed = await client.call_tool("workspace_files", {"workspace": workspace})
    assert listed.structured_content == {"workspace": workspace, "files": [], "bytes": 0, "state": None}
    deleted = await client.call_tool("workspace_delete", {"workspace": workspace})
    assert deleted.is_error is False
    gone = await client.call_tool("workspace_files", {"workspace": workspace})
    assert gone.is_error


async def test_metrics_and_health_are_asked_of_the_service(tmp_path: Path) -> None:
    missing = ImageMissing("the sandbox image agent-sandbox:minimal is missing; build it")
    engine = ScriptedEngine(outcome(exit_code=3), health=EngineHealth("scripted", "1.0", problems=[missing]))
    settings = settings_in(tmp_path)
    sandbox = Sandbox(settings, engine)
    server = build_server(sandbox, "streamable-http")
    async with Client(server) as client:
        await client.call_tool("run_python", {"code": "raise SystemExit(3)"})
    app = http_app(server, "streamable-http", "127.0.0.1", settings.server)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://127.0.0.1") as http:
        health = await http.get("/healthz")
        metrics = await http.get("/metrics")
    assert health.status_code == 503
    assert health.json()["problems"] == [str(missing)]
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.text)
        for sample in family.samples
    }
    assert samples[("agent_sandbox_runs_total", (("outcome", "program_error"), ("tool", "run_python")))] == 1
    assert samples[("agent_sandbox_run_slots", ())] == settings.engine.max_concurrent_runs


async def test_the_python_versions_offered_are_in_the_descriptions_and_the_config(tmp_path: Path) -> None:
    """A model picks CPython 3.13 by profile name: the tools say which profile has which Python,
    sandbox://config too, the run goes to that profile's image, and a profile not offered is
    refused by name."""
    offered = ["minimal", "minimal-3.13", "datascience-3.13"]
    settings = Settings(
        engine=EngineSettings(pool_size=0, profiles=offered), workspaces=WorkspaceSettings(dir=str(tmp_path))
    )
    engine = ScriptedEngine(outcome(stdout=b"(3, 13)\n"))
    async with Client(build_server(Sandbox(settings, engine)), mode="legacy") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        contents = (await client.read_resource("sandbox://config")).contents
        ran = await client.call_tool(
            "run_python", {"code": "import sys; sys.version_info[:2]", "image": "minimal-3.13"}
        )
        refused = await client.call_tool("run_python", {"code": "1", "image": "datascience"})
    description = tools["run_python"].description or ""
    assert "container with CPython 3.11 or 3.13 (the image profile decides which)" in description
    assert "'minimal' (CPython 3.11 and its standard library only)" in description
    assert "'minimal-3.13' (CPython 3.13 and its standard library only)" in description
    assert "'datascience-3.13' (CPython 3.13 and the data-analysis stack" in description
    assert "CPython 3.11 or 3.13" in (tools["run_project"].description or "")  # both tools say it
    config = json.loads(contents[0].text)  # type: ignore[union-attr]
    assert {name: profile["python"] for name, profile in config["profiles"].items()} == {
        "minimal": "3.11",
        "minimal-3.13": "3.13",
        "datascience-3.13": "3.13",
    }
    assert config["profiles"]["datascience-3.13"]["image"] == "agent-sandbox:datascience-3.13"
    assert "pandas==3.1.1" in config["profiles"]["datascience-3.13"]["packages"]
    assert ran.is_error is False
    assert engine.specs[0].image == "agent-sandbox:minimal-3.13"
    assert refused.is_error
    assert (
        "image profile 'datascience' is not offered here; use one of minimal, minimal-3.13, datascience-3.13"
        in (
            refused.content[0].text  # type: ignore[union-attr]
        )
    )


async def test_one_python_offered_is_named_once(connected: tuple[Client, ScriptedEngine]) -> None:
    client, _ = connected
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert "container with CPython 3.11, NO network" in (tools["run_python"].description or "")
