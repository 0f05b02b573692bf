"""run_batch over the real transports and engine: each item its own sandbox and its own result, in
order, whatever the others do; the batch counts against the client's share and its start rate;
progress says how many are done; nothing is left behind."""

from __future__ import annotations

import os
import sys

import docker
import pytest
from mcp import Client, StdioServerParameters

from agent_sandbox.engine.docker import LABEL

from .conftest import ROOT, serving

pytestmark = pytest.mark.anyio

ITEMS = [
    {"code": "print('hello')"},
    {"code": "import sys\nsys.exit(3)"},
    {"code": "import time\ntime.sleep(30)", "timeout_s": 1},
    {"files": [{"path": "../escape.py", "content": ""}]},
    {
        "files": [{"path": "app/main.py", "content": "import sys\nprint(sys.argv[1:])"}],
        "entrypoint": "app/main.py",
        "args": ["-x"],
    },
    {"code": "1/0"},
    {"code": "open('/work/out.txt', 'w').write('kept')\n6 * 7"},
]


def stdio(env: dict[str, str] | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "agent_sandbox", "serve"],
        cwd=str(ROOT),
        env={**os.environ, **(env or {})},
    )


async def test_a_batch_returns_each_items_own_result_in_order() -> None:
    heard: list[tuple[float, str]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append((progress, message or ""))

    async with Client(stdio(), mode="legacy") as client:  # legacy: progress is reported
        called = await client.call_tool("run_batch", {"items": ITEMS}, progress_callback=on_progress)
    assert called.is_error is False, called.content
    answer = called.structured_content
    assert answer is not None
    results = answer["results"]
    assert [entry["index"] for entry in results] == list(range(len(ITEMS)))
    assert results[0]["result"]["stdout"] == "hello\n"
    assert results[1]["result"]["exit_code"] == 3
    assert [v["kind"] for v in results[2]["result"]["violations"]] == ["timeout"]
    assert results[3]["result"] is None
    assert results[3]["error"].startswith("items[3]: refused: files[0] ('../escape.py'):")
    assert "'..' segments are not allowed" in results[3]["error"]
    assert results[4]["result"]["stdout"] == "['-x']\n"
    assert results[5]["result"]["error"]["type"] == "ZeroDivisionError"
    assert results[6]["result"]["return_value"] == "42"
    assert [a["path"] for a in results[6]["result"]["artifacts"]] == ["out.txt"]
    assert (answer["passed"], answer["failed"], answer["errors"]) == (3, 3, 1)
    assert answer["summary"] == "7 programs: 3 passed, 3 failed, 1 did not run; limits hit: timeout 1"
    text = called.content[0].text
    assert text.splitlines()[0] == answer["summary"]
    assert "[5] exit 1 in" in text
    assert "ZeroDivisionError: division by zero" in text
    assert heard[-1] == (7, "7 of 7 programs done")
    assert docker.from_env().containers.list(all=True, filters={"label": LABEL}) == []


async def test_a_batch_over_the_limit_is_refused_whole_and_names_the_limit() -> None:
    async with Client(stdio({"AGENT_SANDBOX_SERVER__MAX_BATCH": "2"})) as client:
        called = await client.call_tool("run_batch", {"items": [{"code": "1"}] * 3})
    assert called.is_error
    assert "items" in called.content[0].text
    assert "at most 2" in called.content[0].text


async def test_over_http_the_items_share_the_clients_rate() -> None:
    """Each item counts against the client's start rate as it starts: past it, the rest of the
    batch says so item by item, and the items that ran keep their results."""
    env = {"AGENT_SANDBOX_SERVER__RUNS_PER_MINUTE_PER_CLIENT": "3", "AGENT_SANDBOX_ENGINE__POOL_SIZE": "0"}
    with serving("streamable-http", env) as (url, _, _):
        async with Client(f"{url}/mcp") as client:
            called = await client.call_tool("run_batch", {"items": [{"code": "print(1)"}] * 5})
    answer = called.structured_content
    assert answer is not None
    assert (answer["passed"], answer["errors"]) == (3, 2)
    refusals = [entry["error"] for entry in answer["results"] if entry["error"]]
    assert all("too many runs" in refusal for refusal in refusals), refusals
