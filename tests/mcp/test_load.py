"""Load: 300 runs from 16 concurrent client sessions over Streamable HTTP, mixed outcomes.

Every call gets its own correct result (none lost or crossed), no container is left, and the
server's memory stays bounded (its peak RSS is printed for the record)."""

from __future__ import annotations

import secrets
from typing import Any

import anyio
import pytest
from mcp import Client

from agent_sandbox.config import EngineSettings
from agent_sandbox.engine.docker import LABEL, DockerEngine
from tests.helpers import owned_by

from .conftest import serving

pytestmark = pytest.mark.anyio
RUNS = 300
CLIENTS = 16
PEAK_RSS_LIMIT_MIB = 400


def job(index: int) -> tuple[str, dict[str, Any]]:
    """A kind of program (ok, error or timeout) and its arguments, printing a unique token."""
    token = f"job-{index}-{secrets.token_hex(4)}"
    if index % 10 == 0:
        return "timeout", {"code": f"import time\nprint({token!r})\ntime.sleep(30)", "timeout_s": 1}
    if index % 3 == 0:
        return "error", {"code": f"print({token!r})\nraise SystemExit(7)"}
    return "ok", {"code": f"print({token!r})"}


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_300_mixed_runs_from_16_clients_each_get_their_own_result(engine: DockerEngine) -> None:
    jobs = [job(index) for index in range(RUNS)]
    results: dict[int, Any] = {}
    with serving("streamable-http") as (url, process, _):
        pending = iter(range(RUNS))

        async def client_session() -> None:
            # Handshake-era sessions: each client is its own MCP session, with its own share.
            async with Client(f"{url}/mcp", mode="legacy") as client:
                for index in pending:
                    results[index] = await client.call_tool("run_python", jobs[index][1])

        with anyio.fail_after(600):
            async with anyio.create_task_group() as group:
                for _ in range(CLIENTS):
                    group.start_soon(client_session)
        peak = peak_rss_mib(process.pid)
        # Before the server stops (its shutdown would sweep leftovers): nothing left over now.
        owner = owned_by(process.pid)

        def only_the_warm_pool_is_left() -> bool:
            """Used containers gone; waiting ones kept: the pool grew with the load, up to its most."""
            left = engine.client.containers.list(all=True, sparse=True, filters=owner)
            most = EngineSettings().pool_max_size
            return 2 <= len(left) <= most and all(container.status == "running" for container in left)

        with anyio.fail_after(30):  # the last used containers are torn down in the background
            while not only_the_warm_pool_is_left():
                await anyio.sleep(0.1)
    print(f"\nserver peak RSS after {RUNS} runs from {CLIENTS} clients: {peak:.0f} MiB")

    assert sorted(results) == list(range(RUNS))
    for index, (kind, arguments) in enumerate(jobs):
        result = results[index]
        assert result.is_error is False, (index, result.content)
        data = result.structured_content
        token = arguments["code"].split("print(")[1].split(")")[0].strip("'")
        assert data["stdout"] == f"{token}\n", (index, data["stdout"])  # its own output, nobody else's
        if kind == "ok":
            assert (data["exit_code"], data["timed_out"]) == (0, False)
        elif kind == "error":
            assert (data["exit_code"], data["timed_out"]) == (7, False)
        else:
            assert data["timed_out"] is True
            assert [v["kind"] for v in data["violations"]] == ["timeout"]
    assert engine.client.containers.list(all=True, sparse=True, filters={"label": LABEL}) == []
    assert peak < PEAK_RSS_LIMIT_MIB
