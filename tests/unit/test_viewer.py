"""The run viewer's place in the MCP layer, on a scripted engine: the tools name it, the server
serves it as an MCP App, and a call's result is the same whether the client renders Apps or not.
The viewer itself, in a browser against the real host side, is tests/mcp/test_viewer.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.extension import ClientExtension, advertise
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from mcp_types import TextResourceContents

from agent_sandbox.background import BackgroundRuns
from agent_sandbox.config import EngineSettings, RunSettings, Settings, WorkspaceSettings
from agent_sandbox.engine.spec import Outcome
from agent_sandbox.models import ArtifactPreview
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server import build_server
from agent_sandbox.server.content import TABLES_META
from agent_sandbox.server.viewer import VIEWER_URI, viewer_html
from tests.scripted_engine import ScriptedEngine, outcome

pytestmark = pytest.mark.anyio

APPS = advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


PREVIEW = ArtifactPreview(csv="a,b\n1,2\n3,4\n", rows=1000)  # as the launcher makes it in the sandbox


def with_preview(done: Outcome) -> Outcome:
    """The outcome with the Parquet file's preview, as the launcher sends it in the manifest."""
    assert done.files is not None
    entries = [
        replace(entry, preview=PREVIEW) if entry.path.endswith(".parquet") else entry
        for entry in done.files.files
    ]
    return replace(done, files=replace(done.files, files=entries))


def connect(tmp_path: Path, extensions: Sequence[ClientExtension] = (), runs: int = 1) -> Client:
    files = {"plot.png": PNG, "table.csv": b"a,b\n1,2\n", "data.parquet": b"PAR1\0"}
    engine = ScriptedEngine(*(with_preview(outcome(stdout=b"done\n", files=files)) for _ in range(runs)))
    sandbox = Sandbox(Settings(engine=EngineSettings(pool_size=0), runs={"dir": str(tmp_path)}), engine)
    return Client(build_server(sandbox), extensions=list(extensions))


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    async with connect(tmp_path, [APPS]) as connected:
        yield connected


async def test_the_run_tools_name_the_viewer_and_the_others_do_not(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    viewed = ("run_python", "run_project", "run_result")  # run_result: a finished background run's
    for name in viewed:
        assert tools[name].meta == {"ui": {"resourceUri": VIEWER_URI}}
    assert not any((tool.meta or {}).get("ui") for name, tool in tools.items() if name not in viewed)


async def test_the_server_serves_the_viewer_as_an_mcp_app(client: Client) -> None:
    assert EXTENSION_ID in (client.server_capabilities.extensions or {})
    listed = {str(resource.uri): resource for resource in (await client.list_resources()).resources}
    assert listed[VIEWER_URI].mime_type == APP_MIME_TYPE
    (contents,) = (await client.read_resource(VIEWER_URI)).contents
    assert isinstance(contents, TextResourceContents)
    assert contents.mime_type == APP_MIME_TYPE
    assert contents.text == viewer_html()
    assert contents.meta == {"ui": {"prefersBorder": True}}


def test_the_viewer_is_self_contained_and_never_writes_html_it_was_given() -> None:
    html = viewer_html()
    assert not re.search(r"https?://", html)  # no CDN, no fetch: all it needs is in the resource
    assert "default-src 'none'" in html  # and its own CSP says so
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", html)  # text only
    for method in ("ui/initialize", "ui/notifications/initialized", "ui/notifications/tool-result"):
        assert f'"{method}"' in html


async def test_only_an_apps_client_gets_the_parquet_previews_and_only_in_meta(tmp_path: Path) -> None:
    """The view reads what the result already carries, and for a Parquet file the first rows
    the sandbox wrote as CSV: those in ``_meta`` (hosts keep it from the model), for a client
    with MCP Apps only. Content and structured content are the same for both; a client without
    Apps gets exactly the result it got before."""
    results: list[dict[str, Any]] = []
    for extensions in ([APPS], []):
        async with connect(tmp_path / str(len(results)), extensions) as client:
            result = await client.call_tool("run_python", {"code": "1"})
        dumped = result.model_dump(mode="json", by_alias=True)
        dumped["structuredContent"]["duration_s"] = 0  # the host's own timing
        results.append(dumped)
    with_apps, without = results
    assert with_apps["_meta"].pop(TABLES_META) == {"data.parquet": {"csv": PREVIEW.csv, "rows": 1000}}
    assert TABLES_META not in (without["_meta"] or {})
    assert with_apps == without  # the rest of _meta too (the SDK's serverInfo)
    assert [block["type"] for block in without["content"]] == ["text", "image", "resource", "resource"]
    assert "1,2\n3,4" not in str(without)  # the preview is nowhere a model reads


async def test_run_result_gives_a_background_runs_previews_to_an_apps_client_too(tmp_path: Path) -> None:
    """A finished background run's result comes from the run store, previews kept beside it."""
    tables = {"data.parquet": {"csv": PREVIEW.csv, "rows": 1000}}
    for extensions, expected in (([APPS], tables), ([], None)):
        folder = tmp_path / str(len(extensions))
        settings = Settings(
            engine=EngineSettings(pool_size=0),
            runs=RunSettings(dir=str(folder / "runs")),
            workspaces=WorkspaceSettings(dir=str(folder / "workspaces")),
        )
        files = {"data.parquet": b"PAR1\0"}
        sandbox = Sandbox(settings, ScriptedEngine(with_preview(outcome(files=files))))
        background = BackgroundRuns(settings.runs)
        with anyio.fail_after(10):
            async with sandbox, background:
                server = build_server(sandbox, background=background)
                async with Client(server, extensions=list(extensions)) as client:
                    started = await client.call_tool("run_python", {"code": "1", "background": True})
                    run_id = (started.structured_content or {})["run_id"]
                    result = await client.call_tool("run_result", {"run_id": run_id, "wait_s": 5})
        assert result.structured_content is not None
        assert "exit_code" in result.structured_content  # the result, from the store
        assert (result.meta or {}).get(TABLES_META) == expected
