"""The MCP server in-process through the SDK's client, in both protocol modes, on the real engine."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from mcp import Client

from agent_sandbox.config import EngineSettings, Settings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server import build_server
from tests.helpers import TOOLS, while_running

pytestmark = pytest.mark.anyio


@pytest.fixture
def sandbox(engine: DockerEngine) -> Sandbox:
    """Cold starts only: these tests count the containers that exist (tests/integration/test_pool.py
    covers the pool's own)."""
    return Sandbox(Settings(engine=EngineSettings(pool_size=0)), engine)


RESULT_FIELDS = {
    "exit_code", "stdout", "stderr", "stdout_truncated", "stderr_truncated", "stdout_bytes",
    "stderr_bytes", "duration_s", "timed_out", "oom_killed", "peak_memory_mib", "cpu_s", "usage_source",
    "oom_victim", "stopped_at", "warm_start", "violations", "notes", "limits", "profile", "install",
    "return_value", "error", "artifacts", "workspace", "state",
}  # fmt: skip


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, sandbox: Sandbox) -> AsyncIterator[Client]:
    async with Client(build_server(sandbox), mode=request.param) as connected:
        yield connected


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> Any:
    return await client.call_tool(tool, arguments)


async def test_both_tools_are_listed_with_full_schemas_and_annotations(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    python, project = tools["run_python"], tools["run_project"]
    assert python.input_schema["required"] == ["code"]
    assert set(python.input_schema["properties"]) == {
        "code",
        "stdin",
        "timeout_s",
        "requirements",
        "image",
        "workspace",
        "return_last_expression",
        "background",
        "keep_state",
    }
    assert project.input_schema["required"] == ["files"]
    assert set(project.input_schema["properties"]) == {
        "files",
        "entrypoint",
        "args",
        "stdin",
        "env",
        "timeout_s",
        "requirements",
        "image",
        "workspace",
        "background",
    }
    for tool in (python, project):
        assert tool.output_schema is not None
        # A result, or for a background run its status: both described, either may come back.
        assert tool.output_schema["type"] == "object"
        assert {branch["$ref"] for branch in tool.output_schema["anyOf"]} == {
            "#/$defs/RunResult",
            "#/$defs/RunStatus",
        }
        assert set(tool.output_schema["$defs"]["RunResult"]["properties"]) >= RESULT_FIELDS
        assert "NO network" in (tool.description or "")
        assert "/work" in (tool.description or "")
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint is False
        assert tool.annotations.destructive_hint is False
        assert tool.annotations.open_world_hint is False
        for name, schema in tool.input_schema["properties"].items():
            assert schema.get("description"), f"{tool.name}.{name} has no description"


async def test_run_python_returns_the_structured_result_and_a_readable_summary(client: Client) -> None:
    result = await call(client, "run_python", {"code": "print('hello')\nprint(6 * 7)"})
    assert result.is_error is False
    data = result.structured_content
    assert set(data) == RESULT_FIELDS
    assert data["exit_code"] == 0
    assert data["stdout"] == "hello\n42\n"
    assert data["timed_out"] is False
    text = result.content[0].text
    assert text.startswith("status: exit code 0")
    assert "hello\n42" in text


async def test_run_project_runs_files_with_args_env_and_stdin(client: Client) -> None:
    files = [
        {"path": "main.py", "content": "import sys, os\nfrom lib import greet\nprint(greet(sys.argv[1]), "
         "os.environ['MOOD'], sys.stdin.read())"},
        {"path": "lib/__init__.py", "content": "def greet(name):\n    return f'hi {name}'\n"},
        {"path": "data.bin", "content": "AAEC", "encoding": "base64"},
    ]  # fmt: skip
    arguments = {"files": files, "args": ["ada"], "env": {"MOOD": "happy"}, "stdin": "piped"}
    result = await call(client, "run_project", arguments)
    assert result.is_error is False, result.content
    assert result.structured_content["stdout"] == "hi ada happy piped\n"


async def test_a_failing_program_is_a_successful_call(client: Client) -> None:
    result = await call(client, "run_python", {"code": "raise KeyError('missing')"})
    assert result.is_error is False
    assert result.structured_content["exit_code"] == 1
    assert "KeyError: 'missing'" in result.structured_content["stderr"]
    assert result.structured_content["error"]["type"] == "KeyError"
    assert "uncaught KeyError: 'missing'" in result.content[0].text


async def test_a_limit_hit_comes_back_as_violations_and_notes(client: Client) -> None:
    code = "import time\nprint('before')\ntime.sleep(30)"
    result = await call(client, "run_python", {"code": code, "timeout_s": 1})
    data = result.structured_content
    assert result.is_error is False
    assert data["timed_out"] is True
    assert data["stdout"] == "before\n"
    assert [v["kind"] for v in data["violations"]] == ["timeout"]
    assert "limit hit: timeout" in result.content[0].text


@pytest.mark.parametrize(
    ("tool", "arguments", "words"),
    [
        ("run_project", {"files": [{"path": "../x.py", "content": ""}], "entrypoint": "../x.py"}, "'..'"),
        ("run_project", {"files": [{"path": "/abs.py", "content": ""}]}, "absolute paths are not allowed"),
        (
            "run_project",
            {"files": [{"path": "a.py", "content": "1"}], "entrypoint": "b.py"},
            "'b.py' is not one",
        ),
        (
            "run_project",
            {"files": [{"path": "main.py", "content": ""}], "env": {"BAD-NAME": "1"}},
            "BAD-NAME",
        ),
        (
            "run_project",
            {"files": [{"path": "main.py", "content": "!", "encoding": "base64"}]},
            "not valid base64",
        ),
        ("run_project", {"files": [{"path": "main.py", "content": "x" * (11 * 2**20)}]}, "per-file limit"),
        ("run_project", {"files": []}, "files"),
        (
            "run_python",
            {"code": "print(1)", "timeout_s": 100000},
            "timeout_s 100000 is above the maximum of 300",
        ),
        ("run_python", {"code": "print(1)", "timeout_s": -1}, "timeout_s"),
        ("run_python", {}, "code"),
        (
            "run_python",
            {"code": "pass", "image": "datascience"},
            "image profile 'datascience' is not offered",
        ),
        ("run_python", {"code": "pass", "requirements": ["x @ file:///etc"]}, "points at a URL or file"),
        (
            "run_project",
            {"files": [{"path": "main.py", "content": ""}, {"path": "requirements.txt", "content": "-e ."}]},
            "requirements.txt line 1 ('-e .') is a pip option",
        ),
    ],
)
async def test_refused_input_is_a_tool_error_that_says_what_to_change(
    client: Client, tool: str, arguments: dict[str, Any], words: str
) -> None:
    result = await call(client, tool, arguments)
    assert result.is_error is True
    text = result.content[0].text
    assert words in text
    assert text != f"Error executing tool {tool}"


async def test_requirements_are_installed_and_reported_apart_from_the_output(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    description = tools["run_python"].description or ""
    assert "'minimal' (CPython 3.11 and its standard library only)" in description
    assert "list them in `requirements`" in description
    result = await call(
        client, "run_python", {"code": "import six; print(six.__name__)", "requirements": ["six"]}
    )
    assert result.is_error is False
    structured = result.structured_content
    assert structured["stdout"] == "six\n"
    assert structured["install"]["ok"] is True
    assert structured["install"]["wheels"][0].startswith("six-")
    summary = result.content[0].text
    assert "requirements: six -> 1 wheel(s)" in summary
    assert "installed in" in summary


async def test_progress_is_reported_while_starting_and_running(client: Client) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    await client.call_tool("run_python", {"code": "print(1)"}, progress_callback=on_progress)
    messages = [message for _, _, message in seen]
    assert messages == ["creating a fresh container", "the program is running", "output: 1\n", "finished"]
    progress = [progress for progress, _, _ in seen]
    assert progress[:2] == [2, 3]
    assert 3 < progress[2] < 4  # within the running step: the share of the time limit used
    assert progress[3] == 4
    seen.clear()
    await client.call_tool(
        "run_python", {"code": "import six", "requirements": ["six"]}, progress_callback=on_progress
    )
    assert seen[0][:2] == (0, 4)
    assert seen[0][2] == "fetching the requirements' wheels on the host"
    assert [progress for progress, _, _ in seen] == [0, 2, 3, 4]


async def test_the_config_resource_shows_the_image_and_limits(client: Client) -> None:
    listed = [str(resource.uri) for resource in (await client.list_resources()).resources]
    assert "sandbox://config" in listed
    contents = (await client.read_resource("sandbox://config")).contents
    config = json.loads(contents[0].text)  # type: ignore[union-attr]
    assert config["profile"] == "minimal"
    assert config["profiles"] == {
        "minimal": {"image": "agent-sandbox:minimal", "python": "3.11", "packages": []}
    }
    assert config["packages"]["enabled"] is True
    assert config["network"] == "none"
    assert config["limits"]["memory_mib"] == 1024
    assert config["limits"]["max_timeout_s"] == 300


async def test_cancelling_a_call_removes_its_container_at_once(
    sandbox: Sandbox, engine: DockerEngine
) -> None:
    async with Client(build_server(sandbox), mode="legacy") as client:
        async with while_running(client, "import time\ntime.sleep(60)") as call:
            assert len(engine.our_containers()) == 1
            call.cancel_scope.cancel()
        with anyio.fail_after(10):
            while engine.our_containers():
                await anyio.sleep(0.1)


@pytest.mark.parametrize(
    ("image_repository", "docker_host", "words"),
    [
        ("agent-sandbox-no-such-image", "", "agent-sandbox image build"),
        ("agent-sandbox", "unix:///nonexistent/docker.sock", "no Docker engine answers"),
    ],
)
async def test_infrastructure_failures_are_tool_errors_with_a_fix(
    image_repository: str, docker_host: str, words: str
) -> None:
    settings = Settings(engine=EngineSettings(docker_host=docker_host, image_repository=image_repository))
    sandbox = Sandbox(settings)
    async with Client(build_server(sandbox)) as client:
        result = await client.call_tool("run_python", {"code": "print(1)"})
    assert result.is_error is True
    assert words in result.content[0].text


async def test_a_full_queue_is_a_busy_tool_error(engine: DockerEngine) -> None:
    settings = Settings(engine=EngineSettings(pool_size=0, max_concurrent_runs=1, max_queued_runs=0))
    async with Client(build_server(Sandbox(settings, engine))) as client:
        async with while_running(client, "import time\ntime.sleep(1)"):
            result = await client.call_tool("run_python", {"code": "print(1)"})
        assert result.is_error is True
        assert "the sandbox is busy: 1 runs are in progress and 0 are waiting" in result.content[0].text
