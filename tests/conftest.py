"""Fixtures shared by the integration and MCP tests: the real Docker engine and sandbox image.

Only tests that ask for them touch Docker, so the unit tests run anywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import docker
import pytest

from agent_sandbox.config import FileSettings, LimitSettings, Settings
from agent_sandbox.engine.docker import LABEL, DockerEngine
from agent_sandbox.sandbox import Sandbox
from tests.helpers import SandboxFactory


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The engine must be there: `make test` starts it. A missing engine fails, never skips."""
    client = docker.from_env()
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def engine(docker_client: docker.DockerClient) -> Iterator[DockerEngine]:
    """One engine for the session, like a server has; the suite must leave no container behind."""
    settings = Settings()
    engine = DockerEngine(settings.engine, client=docker_client)
    health = engine.health([settings.engine.image_of(settings.engine.profile)], "")
    assert health.problems == [], health.problems
    yield engine
    leftovers = docker_client.containers.list(all=True, sparse=True, filters={"label": LABEL})
    assert leftovers == [], f"containers left behind: {[c.name for c in leftovers]}"


@pytest.fixture
def profile() -> Settings:
    """The settings sandboxes start from: the defaults (the engine's default runtime, runc).
    Modules that must hold under every shipped profile override it with ``params=PROFILES``."""
    return Settings()


@pytest.fixture(params=["cold", "warm"])
async def make_sandbox(
    request: pytest.FixtureRequest, engine: DockerEngine, profile: Settings
) -> AsyncIterator[SandboxFactory]:
    """Makes sandboxes from ``profile`` with the given limits (only those a test sets replace the
    profile's), each test once with every run starting a container cold and once with a warm
    pool of the same shape (filled before the test goes on): the same assertions must hold."""
    warm = request.param == "warm"
    async with contextlib.AsyncExitStack() as stack:

        async def make(limits: LimitSettings | None = None, files: FileSettings | None = None) -> Sandbox:
            chosen = limits.model_dump(include=limits.model_fields_set) if limits else {}
            settings = Settings(
                **{
                    **profile.model_dump(),
                    "engine": {**profile.engine.model_dump(), "pool_size": 2 if warm else 0},
                    "limits": {**profile.limits.model_dump(), **chosen},
                    "files": files or profile.files,
                }
            )
            sandbox = Sandbox(settings, engine)
            if warm:
                await stack.enter_async_context(sandbox)
                assert sandbox.pool is not None
                await sandbox.pool.filled()
            return sandbox

        yield make


@pytest.fixture
async def sandbox(make_sandbox: SandboxFactory) -> Sandbox:
    return await make_sandbox()
