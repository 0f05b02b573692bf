"""Workspaces over MCP: the four tools, runs that keep /work between calls, names that are not
UTF-8, a full workspace, and a workspace made by one client (an HTTP session, a stdio host) that
another cannot see."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from mcp_types import Implementation

from agent_sandbox.config import EngineSettings, FileSettings, Settings, WorkspaceSettings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server import build_server
from tests.mcp.conftest import ROOT, serving

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


async def test_names_that_are_not_utf8_are_listed_escaped_and_read_back_by_that_name(client: Client) -> None:
    workspace = (await client.call_tool("workspace_create", {})).structured_content["workspace"]  # type: ignore[index]
    code = "open(b'a\\xff.txt', 'w').write('ff')\nopen(b'a\\xfe.txt', 'w').write('fe')"
    run = await client.call_tool("run_python", {"code": code, "workspace": workspace})
    assert run.structured_content is not None
    assert sorted(a["path"] for a in run.structured_content["artifacts"]) == ["a\\xfe.txt", "a\\xff.txt"]
    listed = await client.call_tool("workspace_files", {"workspace": workspace})
    assert listed.structured_content is not None
    assert [f["path"] for f in listed.structured_content["files"]] == ["a\\xfe.txt", "a\\xff.txt", "main.py"]
    read = await client.call_tool("workspace_read", {"workspace": workspace, "path": "a\\xff.txt"})
    assert read.structured_content is not None
    assert read.structured_content["content"] == "ff"
    malformed = await client.call_tool("workspace_read", {"workspace": workspace, "path": "a\\q.txt"})
    assert malformed.is_error is True
    assert "copy the name exactly as it was listed" in malformed.content[0].text  # type: ignore[union-attr]


async def test_a_full_workspace_refuses_a_call_saying_what_it_holds_and_how_to_make_room(
    engine: DockerEngine, tmp_path: Path
) -> None:
    settings = Settings(
        engine=EngineSettings(pool_size=0),
        files=FileSettings(max_files=3),
        workspaces=WorkspaceSettings(dir=str(tmp_path)),
    )
    async with Client(build_server(Sandbox(settings, engine))) as connected:
        workspace = (await connected.call_tool("workspace_create", {})).structured_content["workspace"]  # type: ignore[index]
        files = [{"path": name, "content": "pass"} for name in ("main.py", "a.py", "b.py")]
        full = await connected.call_tool("run_project", {"files": files, "workspace": workspace})
        assert full.is_error is False
        more = [{"path": "c.py", "content": ""}, {"path": "d.py", "content": ""}]
        refused = await connected.call_tool(
            "run_project", {"files": more, "workspace": workspace, "entrypoint": "c.py"}
        )
        replacing = await connected.call_tool(
            "run_python", {"code": "import os\nos.remove('a.py')", "workspace": workspace}
        )
        after = await connected.call_tool("workspace_files", {"workspace": workspace})
    assert refused.is_error is True
    text = refused.content[0].text  # type: ignore[union-attr]
    assert f"workspace {workspace} holds 3 files and this call adds 2 ('c.py', 'd.py')" in text
    assert "a run starts with at most 3 files; make room first" in text
    assert replacing.is_error is False  # main.py replaces main.py: room enough to delete a file
    assert after.structured_content is not None
    assert [f["path"] for f in after.structured_content["files"]] == ["b.py", "main.py"]


async def test_two_stdio_hosts_of_one_user_keep_their_own_workspaces(tmp_path: Path) -> None:
    """A desktop app and an IDE each start `agent-sandbox serve` with the same workspaces folder;
    the host application each names (clientInfo) keeps the other's workspaces out of reach."""

    def host(name: str) -> Client:
        parameters = StdioServerParameters(
            command=sys.executable,
            args=["-m", "agent_sandbox", "serve"],
            cwd=str(ROOT),
            env={**os.environ, "AGENT_SANDBOX_WORKSPACES__DIR": str(tmp_path)},
        )
        return Client(parameters, mode="legacy", client_info=Implementation(name=name, version="1"))

    async with host("claude-ai") as desktop, host("visual-studio-code") as ide:
        created = await desktop.call_tool("workspace_create", {})
        assert created.structured_content is not None
        workspace = created.structured_content["workspace"]
        mine = await desktop.call_tool("run_python", {"code": "print('desktop')", "workspace": workspace})
        theirs = await ide.call_tool("run_python", {"code": "print('ide')", "workspace": workspace})
    assert mine.is_error is False
    assert theirs.is_error is True
    assert "belongs to another client" in theirs.content[0].text  # type: ignore[union-attr]


async def test_a_notebook_remembers_across_fresh_containers_and_a_server_restart(tmp_path: Path) -> None:
    """docs/workspaces.md's transcript over stdio: names defined in one call are there in the next, each
    call in a fresh container, and after the server process itself is replaced."""
    parameters = StdioServerParameters(
        command=sys.executable,
        args=["-m", "agent_sandbox", "serve"],
        cwd=str(ROOT),
        env={
            **os.environ,
            "AGENT_SANDBOX_WORKSPACES__DIR": str(tmp_path),
            "AGENT_SANDBOX_ENGINE__POOL_SIZE": "0",
        },
    )
    host = Implementation(name="claude-ai", version="1")
    async with Client(parameters, mode="legacy", client_info=host) as first_server:
        names = {tool.name for tool in (await first_server.list_tools()).tools}
        assert "workspace_reset_state" in names
        created = await first_server.call_tool("workspace_create", {})
        assert created.structured_content is not None
        workspace = created.structured_content["workspace"]
        define = (
            "import statistics\nscores = [3, 5, 8]\ndef spread(xs):\n    return max(xs) - min(xs)\n"
            "rows = (s for s in scores)\n"
        )
        one = await first_server.call_tool("run_python", {"code": define, "workspace": workspace})
        assert one.structured_content is not None
        state = one.structured_content["state"]
        assert state["saved"] is True
        assert state["kept"] == ["statistics", "spread", "scores"]  # modules, definitions, the rest
        assert state["dropped"] == [{"name": "rows", "why": state["dropped"][0]["why"]}]
        assert "not kept for the next call: rows (a generator" in one.content[0].text  # type: ignore[union-attr]
        two = await first_server.call_tool(
            "run_python",
            {"code": "scores.append(10)\nspread(scores), statistics.mean(scores)", "workspace": workspace},
        )
        assert two.structured_content is not None
        assert two.structured_content["return_value"] == "(7, 6.5)"
        listed = await first_server.call_tool("workspace_files", {"workspace": workspace})
        assert listed.structured_content is not None
        assert listed.structured_content["state"]["names"] == ["statistics", "spread", "scores"]
    async with Client(parameters, mode="legacy", client_info=host) as second_server:
        three = await second_server.call_tool(
            "run_python", {"code": "spread(scores)", "workspace": workspace}
        )
        assert three.structured_content is not None
        assert three.structured_content["return_value"] == "7"
        cleared = await second_server.call_tool("workspace_reset_state", {"workspace": workspace})
        assert cleared.is_error is False
        four = await second_server.call_tool(
            "run_python", {"code": "'scores' in globals()", "workspace": workspace}
        )
        assert four.structured_content is not None
        assert four.structured_content["return_value"] == "False"
