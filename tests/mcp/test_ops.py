"""/healthz and /metrics on real HTTP servers (both transports), scraped after real runs."""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import docker
import httpx2
import pytest
import uvicorn
from anyio.abc import TaskGroup
from mcp import Client
from mcp.client.sse import sse_client
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp

from agent_sandbox.config import EngineSettings, Settings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server import build_server, ops
from agent_sandbox.server.progress import STAGE_MESSAGES
from agent_sandbox.server.transports import Transport, http_app

from .conftest import free_port, serving

pytestmark = pytest.mark.anyio
HTTP_TRANSPORTS: list[Transport] = ["streamable-http", "sse"]
TOKEN = "test-token-" + secrets.token_hex(8)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SLEEP = "import time; time.sleep(60)"
PYTHON_CANCELLED = {"tool": "run_python", "outcome": "cancelled"}


async def get(url: str, headers: dict[str, str] | None = None) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.get(url, headers=headers or {})


async def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    """Every sample /metrics gives, by name and sorted labels."""
    response = await get(f"{url}/metrics", headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; a labelled series not seen yet counts as 0."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def connect(transport: Transport, url: str) -> Client:
    if transport == "sse":
        stream: AbstractAsyncContextManager[Any] = sse_client(f"{url}/sse")
        return Client(stream, mode="legacy")
    return Client(f"{url}/mcp", mode="legacy")  # legacy: the client tells the server of cancellations


async def start_call(group: TaskGroup, client: Client, code: str, stage: str) -> None:
    """Call run_python with ``code`` in ``group``; return once the server reports ``stage``."""
    reached = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message == stage:
            reached.set()

    group.start_soon(lambda: client.call_tool("run_python", {"code": code}, progress_callback=on_progress))
    with anyio.fail_after(30):
        await reached.wait()


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
async def test_healthz_reports_the_engine_the_images_and_the_pool(
    transport: Transport, docker_client: docker.DockerClient
) -> None:
    with serving(transport) as (url, _, _):
        with anyio.fail_after(30):  # the warm pool fills in the background
            while (response := await get(f"{url}/healthz")).json()["pool"]["ready"] < 2:
                await anyio.sleep(0.5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    engine = body.pop("engine")
    assert body == {
        "status": "ok",
        "images": {"minimal": {"image": "agent-sandbox:minimal", "present": True}},
        "pool": {"ready": 2, "size": 2},
    }
    assert (engine["backend"], engine["version"]) == ("docker", docker_client.version()["Version"])
    assert engine["description"].startswith(f"Docker {engine['version']} at ")
    assert "runc" in engine["runtime"]["offered"]


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
async def test_metrics_count_each_outcome_and_show_the_load(transport: Transport) -> None:
    env = {"AGENT_SANDBOX_ENGINE__MAX_CONCURRENT_RUNS": "1"}
    with serving(transport, env=env) as (url, _, _):
        before = await scrape(url)
        async with connect(transport, url) as client:
            ok = await client.call_tool("run_python", {"code": "print('fine')"})
            failing = await client.call_tool(
                "run_project", {"files": [{"path": "main.py", "content": "raise SystemExit(1)"}]}
            )
            slow = await client.call_tool(
                "run_python", {"code": "import time; time.sleep(30)", "timeout_s": 1}
            )
            refused = await client.call_tool("run_project", {"files": [{"path": "../x.py", "content": ""}]})
            async with anyio.create_task_group() as group:
                # Both sleep: the cancellations arrive one by one, and the queued call may get
                # the slot in between.
                await start_call(group, client, SLEEP, STAGE_MESSAGES["running"])
                await start_call(group, client, SLEEP, "queued, 0 ahead")
                busy = await scrape(url)
                group.cancel_scope.cancel()
            with anyio.fail_after(15):  # the server learns of the cancellations a moment later
                while value(after := await scrape(url), "agent_sandbox_runs_total", **PYTHON_CANCELLED) < 2:
                    await anyio.sleep(0.1)
    assert [ok.is_error, failing.is_error, slow.is_error, refused.is_error] == [False, False, False, True]
    assert slow.structured_content is not None
    assert slow.structured_content["timed_out"] is True

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    runs = {key: after[key] - before.get(key, 0) for key in after if key[0] == "agent_sandbox_runs_total"}
    assert {labels: count for (_, labels), count in runs.items() if count} == {
        (("outcome", "ok"), ("tool", "run_python")): 1,
        (("outcome", "program_error"), ("tool", "run_project")): 1,
        (("outcome", "limit"), ("tool", "run_python")): 1,
        (("outcome", "refused"), ("tool", "run_project")): 1,
        (("outcome", "cancelled"), ("tool", "run_python")): 2,
    }
    for kind in ("timeout", "memory", "output", "processes", "disk", "file_size", "open_files"):
        assert moved("agent_sandbox_violations_total", kind=kind) == (1 if kind == "timeout" else 0)
    histogram = "agent_sandbox_run_duration_seconds"
    assert moved(f"{histogram}_count", tool="run_python") == 2  # ok and timed out; not the cancelled
    assert moved(f"{histogram}_count", tool="run_project") == 1  # the exit 1; not the refusal
    assert moved(f"{histogram}_bucket", tool="run_python", le="+Inf") == 2
    assert moved(f"{histogram}_bucket", tool="run_python", le="1.0") <= 1  # the timed-out one took > 1 s
    assert moved(f"{histogram}_sum", tool="run_python") > 1
    assert value(busy, "agent_sandbox_runs_in_progress") == 1
    assert value(busy, "agent_sandbox_runs_queued") == 1
    assert value(busy, "agent_sandbox_run_slots") == 1
    assert value(after, "agent_sandbox_runs_queued") == 0
    assert value(after, "agent_sandbox_warm_pool_size") == 2
    # The pool grows with the call rate, up to its most.
    assert 0 <= value(after, "agent_sandbox_warm_pool_ready") <= EngineSettings().pool_max_size


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
async def test_with_a_token_metrics_need_it_and_healthz_does_not(transport: Transport) -> None:
    """/healthz answers anyone, but only the status unless the token comes with the request."""
    authorized = {"authorization": f"Bearer {TOKEN}"}
    with serving(transport, env={"AGENT_SANDBOX_SERVER__AUTH_TOKEN": TOKEN}) as (url, _, _):
        anonymous = await get(f"{url}/metrics")
        wrong = await get(f"{url}/metrics", {"authorization": "Bearer " + "x" * len(TOKEN)})
        samples = await scrape(url, authorized)
        health = await get(f"{url}/healthz")
        detailed = await get(f"{url}/healthz", authorized)
        mcp = await get(f"{url}/{'sse' if transport == 'sse' else 'mcp'}")
    assert (anonymous.status_code, wrong.status_code, mcp.status_code) == (401, 401, 401)
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert value(samples, "agent_sandbox_warm_pool_size") == 2
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (detailed.status_code, detailed.json()["status"]) == (200, "ok")
    assert detailed.json()["images"]["minimal"]["present"] is True


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
async def test_without_a_token_only_loopback_host_names_reach_healthz_and_metrics(
    transport: Transport,
) -> None:
    """A DNS-rebinding page sends its own name as Host: the SDK guards MCP, this guards the rest."""
    with serving(transport) as (url, _, _):
        port = url.rpartition(":")[2]
        answers = {
            (path, host): (await get(f"{url}{path}", {"host": host})).status_code
            for path in ("/healthz", "/metrics")
            for host in (
                f"attacker.example:{port}",
                f"localhost:{port}",
                f"127.0.0.1:{port}",
                f"[::1]:{port}",
            )
        }
    for (_, host), status in answers.items():
        assert status == (421 if host.startswith("attacker") else 200), answers


@asynccontextmanager
async def serving_app(app: ASGIApp) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn in this process, for servers `agent-sandbox serve` would refuse
    to start."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
@pytest.mark.parametrize("broken", ["image", "engine"])
async def test_healthz_answers_503_naming_what_is_wrong_and_the_fix(
    transport: Transport, broken: str, engine: DockerEngine
) -> None:
    if broken == "image":
        repository = f"agent-sandbox-missing-{secrets.token_hex(4)}"
        settings = Settings(engine=EngineSettings(pool_size=0, image_repository=repository))
        sandbox = Sandbox(settings, engine)
        problem = f"the sandbox image {repository}:minimal is not on the Docker engine; build it with `agent-sandbox image build --profile minimal`"
    else:
        settings = Settings(engine=EngineSettings(pool_size=0, docker_host="unix:///nonexistent.sock"))
        sandbox = Sandbox(settings)  # an engine of its own, which nothing answers
        problem = "no Docker engine answers"
    app = http_app(build_server(sandbox, transport), transport, "127.0.0.1", settings.server)
    async with serving_app(app) as url:
        response = await get(f"{url}/healthz")
        metrics = await get(f"{url}/metrics")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    # The engine's version is known whenever the engine answered.
    assert body["engine"]["version"] == (engine.version() if broken == "image" else None)
    assert body["images"]["minimal"]["present"] is (False if broken == "image" else None)
    assert len(body["problems"]) == 1
    assert body["problems"][0].startswith(problem)
    assert metrics.status_code == 200  # metrics need no engine


async def test_a_probe_storm_reaches_the_engine_once(engine: DockerEngine) -> None:
    health = ops.HealthCheck(Sandbox(Settings(engine=EngineSettings(pool_size=0)), engine))
    states = []

    async def probe() -> None:
        states.append(await health.state())

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(probe)
    assert len(states) == 50
    assert all(state is states[0] for state in states)
    assert states[0].problems == []


async def test_an_engine_that_never_answers_is_reported_after_the_check_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ops, "CHECK_TIMEOUT_S", 0.5)
    with socket.socket(socket.AF_UNIX) as silent:  # accepts connections, never reads or answers
        silent.bind(str(tmp_path / "docker.sock"))
        silent.listen()
        settings = Settings(engine=EngineSettings(pool_size=0, docker_host=f"unix://{tmp_path}/docker.sock"))
        with anyio.fail_after(5):
            response = await ops.HealthCheck(Sandbox(settings)).response()
    assert response.status_code == 503
    assert b"the Docker engine did not answer within 0.5 s" in response.body
