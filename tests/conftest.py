"""Fixtures shared by the integration and MCP tests: the real Docker engine and sandbox image,
and the Kubernetes test cluster.

Only tests that ask for them touch Docker or the cluster, so the unit tests run anywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import anyio
import docker
import pytest
from kubernetes.client.exceptions import ApiException

from agent_sandbox.config import GVISOR, EngineSettings, FileSettings, LimitSettings, Settings, load_settings
from agent_sandbox.engine.base import Engine
from agent_sandbox.engine.docker import LABEL, DockerEngine
from agent_sandbox.engine.kubernetes import OWNER_ANNOTATION, ROLE_LABEL, KubernetesEngine
from agent_sandbox.engine.launch import orphaned
from agent_sandbox.engine.oci import OciEngine
from agent_sandbox.sandbox import Sandbox
from tests.helpers import (
    KUBERNETES,
    OCI,
    ROOT,
    TEST_NAMESPACE,
    Backend,
    SandboxFactory,
    on_test_cluster,
    skip_unless_offered,
)


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


@pytest.fixture(scope="session")
def oci_engine(engine: DockerEngine) -> Iterator[OciEngine]:
    """One OCI-backend engine for the session (runc, images from the session's Docker engine);
    the suite must leave no container, bundle or cgroup of it behind."""
    oci = OciEngine(Settings(engine=EngineSettings(backend=OCI)).engine, images=engine)
    health = oci.health([oci.settings.image_of(oci.settings.profile)], "")
    assert health.problems == [], health.problems
    yield oci
    leftovers = [bundle.name for bundle in oci.bundles.glob("*")] if oci.bundles.exists() else []
    assert leftovers == [], f"OCI containers left behind: {leftovers}"


def engine_for(request: pytest.FixtureRequest, settings: Settings) -> Engine:
    """The session's engine of ``settings``' backend."""
    backend = settings.engine.backend
    return request.getfixturevalue(
        {KUBERNETES: "kubernetes_engine", OCI: "oci_engine"}.get(backend, "engine")
    )


@pytest.fixture(scope="session")
def kubernetes_engine() -> Iterator[KubernetesEngine]:
    """One engine on the Kubernetes test cluster for the session, its pods in a namespace of the
    tests' own (made here if missing, and kept: a deleted one lingers while it terminates, and
    a session starting meanwhile could not use it); the suite must leave no pod behind."""
    settings = on_test_cluster(load_settings(ROOT / "configs" / "kubernetes.toml"))
    engine = KubernetesEngine(settings.engine, settings.kubernetes, settings.limits.pids)
    try:
        engine.api.create_namespace({"metadata": {"name": TEST_NAMESPACE}})  # type: ignore[arg-type]
    except ApiException as exc:
        if exc.status != 409:  # there already
            raise
    health = engine.health([settings.engine.image_of(settings.engine.profile)], "")
    assert health.problems == [], health.problems
    yield engine
    # Ours, or of a process of ours that has ended (a server a test started): not those of another
    # live test session using the same cluster.
    pods = engine.api.list_namespaced_pod(TEST_NAMESPACE, label_selector=f"{ROLE_LABEL}=sandbox").items
    leftovers = []
    for pod in pods:
        assert pod.metadata is not None
        owner = (pod.metadata.annotations or {}).get(OWNER_ANNOTATION, "")
        being_deleted = pod.metadata.deletion_timestamp is not None
        if (owner == engine.owner or orphaned(owner, engine.owner)) and not being_deleted:
            leftovers.append(pod.metadata.name)
    assert leftovers == [], f"pods left behind: {leftovers}"


@pytest.fixture(params=["docker", OCI, KUBERNETES])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each backend, for tests that must hold on all: Docker, runc run directly (OCI), and the
    Kubernetes test cluster."""
    return backend_named(request, request.param)


def backend_named(request: pytest.FixtureRequest, name: str) -> Backend:
    """The backend ``name``: "docker" (the engine's default runtime), GVISOR (Docker with
    runsc, skipped where the engine lacks it), OCI (runc without Docker) or KUBERNETES (the test
    cluster)."""
    if name == OCI:
        settings = Settings(engine=EngineSettings(backend=OCI))
        return Backend(OCI, request.getfixturevalue("oci_engine"), settings)
    if name == KUBERNETES:
        engine = request.getfixturevalue("kubernetes_engine")
        settings = on_test_cluster(load_settings(ROOT / "configs" / "kubernetes.toml"))
        return Backend(KUBERNETES, engine, settings)
    docker_engine = request.getfixturevalue("engine")
    if name == GVISOR:
        skip_unless_offered(docker_engine, GVISOR, "Docker with gVisor")
        return Backend(GVISOR, docker_engine, Settings(engine=EngineSettings(runtime=GVISOR)))
    return Backend("docker", docker_engine, Settings())


@pytest.fixture
def profile() -> Settings:
    """The settings sandboxes start from: the defaults (the engine's default runtime, runc).
    Modules that must hold under every shipped profile override it with ``params=PROFILES``."""
    return Settings()


@pytest.fixture(params=["cold", "warm"])
async def make_sandbox(request: pytest.FixtureRequest, profile: Settings) -> AsyncIterator[SandboxFactory]:
    """Makes sandboxes from ``profile`` (on its backend's engine) with the given limits (only those
    a test sets replace the profile's), each test once with every run starting a sandbox cold and
    once with a warm pool of the same shape (filled before the test goes on): the same
    assertions must hold."""
    warm = request.param == "warm"
    engine = engine_for(request, profile)
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
                with anyio.fail_after(60):  # a pool that cannot start sandboxes retries for ever
                    await sandbox.pool.filled()
            return sandbox

        yield make


@pytest.fixture
async def sandbox(make_sandbox: SandboxFactory) -> Sandbox:
    return await make_sandbox()
