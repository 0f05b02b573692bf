"""Hostile input through the MCP tools and the protocol itself: every refusal is a clear tool
error naming the offending thing, nothing crashes the server, nothing is left behind."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from mcp import Client

from agent_sandbox.config import EngineSettings, FileSettings, Settings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server import build_server

from .conftest import ROOT, serving

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(engine: DockerEngine) -> AsyncIterator[Client]:
    sandbox = Sandbox(Settings(engine=EngineSettings(pool_size=0)), engine)
    async with Client(build_server(sandbox)) as connected:
        yield connected


def project(*files: dict[str, str], **arguments: Any) -> dict[str, Any]:
    return {"files": list(files), **arguments}


def text(result: Any) -> str:
    return str(result.content[0].text)


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("", "the path is empty"),
        ("/etc/passwd", "absolute paths are not allowed"),
        ("../escape.py", "'..' segments are not allowed"),
        ("a/../../b.py", "'..' segments are not allowed"),
        ("./main.py", "empty or '.' path segments"),
        ("a//b.py", "empty or '.' path segments"),
        ("a\\b.py", "backslash"),
        ("nul\0.py", "control character"),
        ("new\nline.py", "control character '\\n'"),
        ("invoice\u202efdp.py", "text-direction control"),
        ("x" * 256 + ".py", "longer than 255 bytes"),
        ("a/" * 600 + "b.py", "longer than 1024 bytes"),
    ],
)
async def test_every_path_rule_is_a_tool_error_naming_the_path(client: Client, path: str, rule: str) -> None:
    result = await client.call_tool(
        "run_project", project({"path": "main.py", "content": ""}, {"path": path, "content": ""})
    )
    assert result.is_error
    assert "files[1]" in text(result)
    assert rule in text(result)


async def test_duplicates_and_file_folder_clashes_are_refused(client: Client) -> None:
    twice = await client.call_tool(
        "run_project", project({"path": "a.py", "content": ""}, {"path": "a.py", "content": ""})
    )
    assert "same path as 'a.py'" in text(twice)
    clash = await client.call_tool(
        "run_project", project({"path": "a", "content": ""}, {"path": "a/b.py", "content": ""})
    )
    assert "files[1]: 'a/b.py' uses 'a' as a folder, but that is sent as a file too" in text(clash)


async def test_ten_thousand_files_are_refused_by_default_and_run_when_allowed(engine: DockerEngine) -> None:
    files = [{"path": f"d{i // 100}/f{i}.txt", "content": str(i)} for i in range(10_000)]
    files.append({"path": "main.py", "content": "import os\nprint(sum(len(f) for _, _, f in os.walk('.')))"})
    async with Client(build_server(Sandbox(Settings(engine=EngineSettings(pool_size=0)), engine))) as client:
        refused = await client.call_tool("run_project", {"files": files})
    assert refused.is_error
    assert "10001 files were sent but at most 1000 are allowed" in text(refused)
    roomy = Settings(engine=EngineSettings(pool_size=0), files=FileSettings(max_files=20_000))
    async with Client(build_server(Sandbox(roomy, engine))) as client:
        ran = await client.call_tool("run_project", {"files": files})
    assert ran.is_error is False, text(ran)
    assert ran.structured_content is not None
    assert ran.structured_content["stdout"] == "10001\n"


async def test_a_50_mib_file_is_refused_by_name(client: Client) -> None:
    big = base64.b64encode(b"\0" * (50 * 2**20)).decode()
    result = await client.call_tool(
        "run_project", project({"path": "data/big.bin", "content": big, "encoding": "base64"})
    )
    assert result.is_error
    assert "files[0] ('data/big.bin'): 52428800 bytes is over the 10240 KiB per-file limit" in text(result)


async def test_files_over_the_total_size_are_refused_by_name(client: Client) -> None:
    chunk = "x" * (9 * 2**20)
    files = [{"path": f"part{i}.txt", "content": chunk} for i in range(6)]
    result = await client.call_tool("run_project", {"files": files})
    assert result.is_error
    assert "files[5] ('part5.txt'): the files add up to more than the 51200 KiB total limit" in text(result)


async def test_deeply_nested_unicode_and_right_to_left_names_work(client: Client) -> None:
    deep = "/".join(["level"] * 60) + "/deep.py"
    files = [
        {
            "path": "main.py",
            "content": "import os\nfor root, _, names in sorted(os.walk('.')):\n    for n in names:\n        print(os.path.join(root, n)[2:])",
        },
        {"path": deep, "content": ""},
        {"path": "données/日本語/файл.txt", "content": "ü"},
        {"path": "עברית/ملف.txt", "content": "rtl"},
    ]
    result = await client.call_tool("run_project", {"files": files})
    assert result.is_error is False, text(result)
    assert result.structured_content is not None
    assert set(result.structured_content["stdout"].splitlines()) == {
        "main.py",
        deep,
        "données/日本語/файл.txt",
        "עברית/ملف.txt",
    }


async def test_invalid_base64_and_a_missing_entrypoint_are_refused(client: Client) -> None:
    bad = await client.call_tool(
        "run_project", project({"path": "b.bin", "content": "@@@", "encoding": "base64"})
    )
    assert "files[0] ('b.bin'): the content is not valid base64" in text(bad)
    outside = await client.call_tool(
        "run_project", project({"path": "lib.py", "content": ""}, entrypoint="../main.py")
    )
    assert "entrypoint" in text(outside)
    missing = await client.call_tool(
        "run_project", project({"path": "lib.py", "content": ""}, entrypoint="main.py")
    )
    assert "entrypoint 'main.py' is not one of the files sent (lib.py)" in text(missing)


@pytest.mark.parametrize(
    ("env", "words"),
    [({"A=B": "1"}, "'A=B' is invalid"), ({"OK": "a\0b"}, "OK contains a NUL"), ({"A\0": "1"}, "is invalid")],
)
async def test_environment_names_with_equals_or_nul_and_values_with_nul_are_refused(
    client: Client, env: dict[str, str], words: str
) -> None:
    result = await client.call_tool("run_project", project({"path": "main.py", "content": ""}, env=env))
    assert result.is_error
    assert words in text(result)


async def test_an_environment_value_with_equals_signs_arrives_verbatim(client: Client) -> None:
    code = "import os; print(os.environ['QUERY'])"
    result = await client.call_tool(
        "run_project", project({"path": "main.py", "content": code}, env={"QUERY": "a=b&c==d"})
    )
    assert result.structured_content is not None
    assert result.structured_content["stdout"] == "a=b&c==d\n"


@pytest.mark.parametrize(
    ("timeout", "words"), [(0, "timeout_s"), (-5, "timeout_s"), (1e12, "above the maximum of 300")]
)
async def test_a_timeout_of_zero_negative_or_huge_is_refused(
    client: Client, timeout: float, words: str
) -> None:
    result = await client.call_tool("run_python", {"code": "print(1)", "timeout_s": timeout})
    assert result.is_error
    assert words in text(result)


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        (
            {"args": ["x" * 200_000]},
            "args[0] is 200000 bytes, over the 131071 bytes Linux allows one argument",
        ),
        ({"env": {"BIG": "y" * 140_000}}, "env BIG is 140004 bytes, over the 131071 bytes"),
        ({"args": ["x" * 1000] * 1500}, "args and env add up to 1501500 bytes, over the 262144 bytes"),
    ],
)
async def test_args_or_env_too_large_to_exec_are_refused_before_anything_runs(
    client: Client, engine: DockerEngine, arguments: dict[str, Any], words: str
) -> None:
    """Once a program failure (exit 127, "Argument list too long"), now a refusal naming the limit."""
    result = await client.call_tool("run_project", project({"path": "main.py", "content": ""}, **arguments))
    assert result.is_error
    assert words in text(result)
    assert "pass large data as a file or on stdin" in text(result)
    assert engine.our_containers() == []


async def test_arguments_with_shell_metacharacters_arrive_verbatim(client: Client) -> None:
    args = ["$(id)", "`whoami`", "; rm -rf / #", "a b", "'\"", "*", "$HOME", "|", "&&", "\\", "-c", "--", ""]
    code = "import json, sys; print(json.dumps(sys.argv[1:]))"
    result = await client.call_tool("run_project", project({"path": "main.py", "content": code}, args=args))
    assert result.structured_content is not None
    assert json.loads(result.structured_content["stdout"]) == args


async def test_files_arrive_byte_for_byte(client: Client) -> None:
    blob = os.urandom(100_000)
    code = "import hashlib; print(hashlib.sha256(open('blob', 'rb').read()).hexdigest())"
    files = [
        {"path": "main.py", "content": code},
        {"path": "blob", "content": base64.b64encode(blob).decode(), "encoding": "base64"},
    ]
    result = await client.call_tool("run_project", {"files": files})
    assert result.structured_content is not None
    assert result.structured_content["stdout"].strip() == hashlib.sha256(blob).hexdigest()


STDIO_GARBAGE = [
    b"this is not json\n",
    b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": "not an object"}\n',
    b'{"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": 5, "arguments": []}}\n',
    b'{"jsonrpc": "2.0", "id": 9, "method": "no/such/method"}\n',
    b"[1, 2, 3]\n",
    b'{"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {"name": "run_python", "arguments": {"code": "'
    + b"x" * (8 * 2**20)
    + b'"}}}\n',
]


def test_malformed_oversized_and_mistyped_messages_over_stdio_do_not_crash_the_server() -> None:
    initialize = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }  # fmt: skip
    call = {
        "jsonrpc": "2.0",
        "id": 99,
        "method": "tools/call",
        "params": {"name": "run_python", "arguments": {"code": "print('alive')"}},
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "agent_sandbox", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "AGENT_SANDBOX_ENGINE__POOL_SIZE": "0"},
    )
    assert server.stdin is not None
    assert server.stdout is not None
    lines = [
        json.dumps(initialize).encode() + b"\n",
        b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n',
    ]
    server.stdin.write(b"".join([*lines, *STDIO_GARBAGE, json.dumps(call).encode() + b"\n"]))
    server.stdin.flush()
    replies: dict[int, Any] = {}
    try:
        while 99 not in replies:  # the valid call after all the garbage is still answered
            line = server.stdout.readline()
            assert line, "the server closed its output"
            message = json.loads(line)
            if "id" in message:
                replies[message["id"]] = message
    finally:
        server.stdin.close()
        assert server.wait(timeout=60) == 0
    assert replies[8]["error"]["code"] == -32602  # wrong types
    assert replies[9]["error"]["code"] == -32601  # no such method
    # id 7 (params not an object), the non-JSON and non-object lines, and the 8 MiB line (id 10)
    # are dropped by the SDK without a reply: what matters is that the server lives on.
    assert replies[99]["result"]["structuredContent"]["stdout"] == "alive\n"


async def test_malformed_oversized_and_mistyped_http_requests_do_not_crash_the_server() -> None:
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    with serving("streamable-http") as (url, process, _):
        async with httpx2.AsyncClient(timeout=30) as http:
            bad_json = await http.post(f"{url}/mcp", content=b"{not json", headers=headers)
            wrong_type = await http.post(f"{url}/mcp", content=b'"a string"', headers=headers)
            wrong_content_type = await http.post(
                f"{url}/mcp", content=b"{}", headers={**headers, "content-type": "text/plain"}
            )
            oversized = await http.post(
                f"{url}/mcp", content=b"[" + b"1," * (60 * 2**20) + b"1]", headers=headers
            )
        assert bad_json.status_code == 400
        assert wrong_type.status_code == 400
        assert wrong_content_type.status_code in (400, 415)
        assert oversized.status_code == 413
        async with Client(f"{url}/mcp") as client:
            result = await client.call_tool("run_python", {"code": "print('alive')"})
        assert result.structured_content is not None
        assert result.structured_content["stdout"] == "alive\n"
        assert process.poll() is None
