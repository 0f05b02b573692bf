"""Workspaces over MCP: the four tools, runs that keep /work between calls, and a workspace made
in one HTTP session that another session cannot see."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client

from agent_sandbox.config import EngineSettings, Settings, WorkspaceSettings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server import build_server
from tests.mcp.conftest import serving

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(engine: DockerEngine, tmp_path: Path) -> AsyncIterator[Client]:
    settings = Settings(engine=EngineSettings(pool_size=0), workspaces=WorkspaceSettings(dir=str(tmp_path)))
    async with Client(build_server(Sandbox(settings, engine))) as connected:
        yield connected


async def test_an_agent_iterates_in_a_workspace_through_the_tools(client: Client) -> None:
    names = {tool.name for tool in (await client.list_tools()).tools}
    assert {"workspace_create", "workspace_files", "workspace_read", "workspace_delete"} <= names
    created = await client.call_tool("workspace_create", {})
    assert created.structured_content is not None
    workspace = created.structured_content["workspace"]
    files = [{"path": "calc.py", "content": "def add(a, b):\n    return a + b\n"}]
    first = await client.call_tool(
        "run_project",
        {
            "files": [*files, {"path": "main.py", "content": "import calc; print(calc.add(1, 2))"}],
            "workspace": workspace,
        },
    )
    assert first.structured_content is not None
    assert first.structured_content["stdout"] == "3\n"
    assert first.structured_content["workspace"]["saved"] is True
    second = await client.call_tool(
        "run_python", {"code": "import calc\ncalc.add(20, 22)", "workspace": workspace}
    )
    assert second.structured_content is not None
    assert second.structured_content["return_value"] == "42"
    assert f"workspace: {workspace} saved" in second.content[0].text  # type: ignore[union-attr]
    listed = await client.call_tool("workspace_files", {"workspace": workspace})
    assert listed.structured_content is not None
    assert [f["path"] for f in listed.structured_content["files"]] == ["calc.py", "main.py"]
    read = await client.call_tool("workspace_read", {"workspace": workspace, "path": "calc.py"})
    assert read.structured_content is not None
    assert read.structured_content["content"] == files[0]["content"]
    deleted = await client.call_tool("workspace_delete", {"workspace": workspace})
    assert deleted.is_error is False
    gone = await client.call_tool("run_python", {"code": "print(1)", "workspace": workspace})
    assert gone.is_error is True
    assert f"there is no workspace '{workspace}' for this client" in gone.content[0].text  # type: ignore[union-attr]


async def test_unknown_ids_and_paths_are_clear_tool_errors(client: Client) -> None:
    missing = await client.call_tool("workspace_files", {"workspace": "../../etc"})
    assert missing.is_error is True
    assert "there is no workspace '../../etc'" in missing.content[0].text  # type: ignore[union-attr]
    workspace = (await client.call_tool("workspace_create", {})).structured_content["workspace"]  # type: ignore[index]
    nothing = await client.call_tool("workspace_read", {"workspace": workspace, "path": "nope.py"})
    assert nothing.is_error is True
    assert "has no file 'nope.py'" in nothing.content[0].text  # type: ignore[union-attr]


async def test_a_workspace_from_one_http_session_is_invisible_to_another(tmp_path: Path) -> None:
    env = {"AGENT_SANDBOX_WORKSPACES__DIR": str(tmp_path)}
    with serving("streamable-http", env=env) as (url, _, _):
        async with (
            Client(f"{url}/mcp", mode="legacy") as first,
            Client(f"{url}/mcp", mode="legacy") as second,
        ):
            created = await first.call_tool("workspace_create", {})
            assert created.structured_content is not None
            workspace = created.structured_content["workspace"]
            mine = await first.call_tool("workspace_files", {"workspace": workspace})
            theirs = await second.call_tool("workspace_files", {"workspace": workspace})
            run = await second.call_tool("run_python", {"code": "print(1)", "workspace": workspace})
    assert mine.is_error is False
    assert theirs.is_error is True
    assert run.is_error is True
    assert "belongs to another client" in theirs.content[0].text  # type: ignore[union-attr]
