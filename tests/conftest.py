"""Fixtures shared by the integration and MCP tests: the real Docker engine and sandbox image.

Only tests that ask for them touch Docker, so the unit tests run anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from agent_sandbox.config import Settings
from agent_sandbox.engine.docker import LABEL, DockerEngine
from agent_sandbox.sandbox import Sandbox


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
    engine.check()
    yield engine
    leftovers = docker_client.containers.list(all=True, filters={"label": LABEL})
    assert leftovers == [], f"containers left behind: {[c.name for c in leftovers]}"


@pytest.fixture
def sandbox(engine: DockerEngine) -> Sandbox:
    return Sandbox(Settings(), engine)
