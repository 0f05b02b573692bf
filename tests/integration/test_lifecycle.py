"""Every container is removed on every path (Docker's, and runc's without Docker), the queue is
bounded, and leftovers are reaped."""

from __future__ import annotations

import contextlib
import socket

import anyio
import docker
import pytest
from docker.models.containers import Container

from agent_sandbox.admission import Busy
from agent_sandbox.config import EngineSettings, Settings
from agent_sandbox.engine.docker import LABEL, OWNER_LABEL, DockerEngine
from agent_sandbox.engine.launch import owner_id
from agent_sandbox.engine.oci import OciEngine
from agent_sandbox.sandbox import Sandbox
from tests.helpers import OCI, snippet

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["docker", OCI])
def started_by(request: pytest.FixtureRequest) -> DockerEngine | OciEngine:
    """The engine whose containers are counted: Docker, and runc without Docker."""
    return request.getfixturevalue("engine" if request.param == "docker" else "oci_engine")


@pytest.fixture
def sandbox(started_by: DockerEngine | OciEngine) -> Sandbox:
    """Cold starts only: these tests count the containers that exist (tests/integration/test_pool.py
    covers the pool's own)."""
    backend = OCI if isinstance(started_by, OciEngine) else "docker"
    return Sandbox(Settings(engine=EngineSettings(pool_size=0, backend=backend)), started_by)


def ours(engine: DockerEngine | OciEngine) -> list[str]:
    """The containers this process made that still exist."""
    if isinstance(engine, OciEngine):
        return engine.containers_of(engine.owner)
    return [container.name or "" for container in engine.our_containers()]


SLEEP = "import time\nprint('started', flush=True)\ntime.sleep(60)"


async def test_no_container_remains_after_a_normal_a_failing_and_a_timed_out_run(
    sandbox: Sandbox, started_by: DockerEngine | OciEngine
) -> None:
    await sandbox.run(snippet("print(1)"))
    await sandbox.run(snippet("raise SystemExit(2)"))
    result = await sandbox.run(snippet(SLEEP, limits={"timeout_s": 1}))
    assert result.timed_out
    assert ours(started_by) == []


async def test_a_cancelled_run_removes_its_container_at_once(
    sandbox: Sandbox, started_by: DockerEngine | OciEngine
) -> None:
    running = anyio.Event()

    async def on_progress(stage: str, detail: str = "") -> None:
        if stage == "running":
            running.set()

    async with anyio.create_task_group() as group:

        async def run() -> None:
            await sandbox.run(snippet(SLEEP), on_progress)

        group.start_soon(run)
        await running.wait()
        assert len(ours(started_by)) == 1
        await anyio.sleep(0.5)
        group.cancel_scope.cancel()
    assert ours(started_by) == []


async def test_a_run_cancelled_while_starting_leaves_nothing(
    sandbox: Sandbox, started_by: DockerEngine | OciEngine
) -> None:
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2):
        with anyio.move_on_after(delay):
            await sandbox.run(snippet(SLEEP))
    assert ours(started_by) == []


async def test_runs_beyond_the_slots_queue_and_beyond_the_queue_are_refused(
    docker_client: docker.DockerClient,
) -> None:
    settings = Settings(engine=EngineSettings(max_concurrent_runs=1, max_queued_runs=1, pool_size=0))
    engine = DockerEngine(settings.engine, client=docker_client)
    sandbox = Sandbox(settings, engine)
    stages: dict[str, list[str]] = {"first": [], "second": []}
    first_running = anyio.Event()
    results = {}

    async def run(name: str, code: str) -> None:
        async def on_progress(stage: str, detail: str = "") -> None:
            stages[name].append(f"{stage}, {detail}" if detail else stage)
            if name == "first" and stage == "running":
                first_running.set()

        results[name] = await sandbox.run(snippet(code), on_progress)

    async with anyio.create_task_group() as group:
        group.start_soon(run, "first", "import time; time.sleep(1.5); print('first')")
        await first_running.wait()
        group.start_soon(run, "second", "print('second')")
        await anyio.sleep(0.2)
        with pytest.raises(Busy, match="busy: 1 runs are in progress and 1 are waiting"):
            await sandbox.run(snippet("print('third')"))
    assert stages == {"first": ["starting", "running"], "second": ["queued, 0 ahead", "starting", "running"]}
    assert results["first"].stdout == "first\n"
    assert results["second"].stdout == "second\n"
    assert engine.our_containers() == []


async def test_concurrent_runs_do_not_see_each_other(sandbox: Sandbox) -> None:
    code = (
        "import os, time\n"
        "open('mine.txt', 'w').write(str(os.environ['ID']))\n"
        "time.sleep(0.5)\n"
        "print(sorted(os.listdir('.')), open('mine.txt').read(), sorted(os.listdir('/tmp')))"
    )
    results = {}

    async def run(number: int) -> None:
        results[number] = await sandbox.run(snippet(code, env={"ID": str(number)}))

    async with anyio.create_task_group() as group:
        for number in range(4):
            group.start_soon(run, number)
    for number, result in results.items():
        assert result.stdout == f"['main.py', 'mine.txt'] {number} []\n"


def test_leftovers_of_a_dead_owner_are_removed_and_live_owners_kept(
    docker_client: docker.DockerClient, engine: DockerEngine
) -> None:
    def labelled(owner: str) -> Container:
        return docker_client.containers.create(
            engine.settings.image_of("minimal"), ["sleep", "60"], labels={LABEL: "1", OWNER_LABEL: owner}
        )

    dead = labelled(owner_id(999999999))
    alive_here = labelled(owner_id(1))
    elsewhere = labelled("another-host/pidns:1:42")
    # Same host name, another PID namespace (a server container run with --uts host): its pids
    # mean nothing here, so only age may remove its containers.
    same_name_other_namespace = labelled(f"{socket.gethostname()}/pidns:1:999999999")
    try:
        assert engine.reap(older_than_s=600) == 1
        remaining = {
            c.id for c in docker_client.containers.list(all=True, sparse=True, filters={"label": LABEL})
        }
        assert dead.id not in remaining
        assert {alive_here.id, elsewhere.id, same_name_other_namespace.id} <= remaining
        # Older than any run can last: nobody will remove these, so the reaper does.
        assert engine.reap(older_than_s=0) == 3
        remaining = {
            c.id for c in docker_client.containers.list(all=True, sparse=True, filters={"label": LABEL})
        }
        assert not {alive_here.id, elsewhere.id, same_name_other_namespace.id} & remaining
    finally:
        for container in (dead, alive_here, elsewhere, same_name_other_namespace):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
