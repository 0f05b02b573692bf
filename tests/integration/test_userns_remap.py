"""User-namespace remapping: on an engine started with ``--userns-remap=default``, uid 1000 in the
sandbox is an unprivileged host uid that no account owns, and the posture probe reports the map.

scripts/userns-engine.sh starts that engine as a SECOND dockerd with its own socket and data root
(the main engine is never touched) and loads the sandbox image into it; the module stops it at
the end. Each claim is checked against the main engine too, so the contrast shows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest

from agent_sandbox.config import GVISOR, EngineSettings, Settings, load_settings
from agent_sandbox.doctor import host_id
from agent_sandbox.engine.docker import LABEL, DockerEngine
from agent_sandbox.probes import POSTURE_PROBE
from agent_sandbox.sandbox import Sandbox
from tests.helpers import cold_sandbox, gvisor_gofers, host_ids, skip_unless_offered, snippet

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "userns-engine.sh"
SANDBOX_UID = 1000
HOST_IDS = [[0, 0, 4294967295]]  # no user namespace of its own: every id is the host's
# What may differ between the two engines' reports: the maps, and mount options that name host
# paths or ids (the data root; tmpfs uid=N+1000). With remapping on cgroup v1, runc also leaves
# the cgroup mounts "rw"; their files belong to the host's root, so nothing there is writable.
# Every sandbox has an IPC namespace of its own, so its number differs from any other sandbox's.
EXPECTED_DIFFERENCES = {
    "uid_map", "gid_map", "root_mount", "work_mount", "tmp_mount", "shm_mount", "cgroup_mounts", "ipc_namespace"
}  # fmt: skip


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def remapped_host() -> Iterator[str]:
    """The remapped engine's DOCKER_HOST; it is stopped (its data root and image kept) after the
    module. Skipped only where it cannot start at all: anything else that goes wrong fails."""
    if os.geteuid() != 0:
        pytest.skip("user-namespace remapping needs a second dockerd, which needs root")
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (scripts/ensure-engine.sh installs docker.io)")
    try:  # stopped even when start fails half-way (a daemon up, its image not loaded)
        started = subprocess.run(
            ["bash", str(SCRIPT), "start"], capture_output=True, text=True, cwd=ROOT, timeout=300
        )
        assert started.returncode == 0, f"scripts/userns-engine.sh start failed:\n{started.stderr[-4000:]}"
        host = started.stdout.strip()
        assert host.startswith("unix://"), started.stdout
        yield host
    finally:
        stopped = subprocess.run(
            ["bash", str(SCRIPT), "stop"], capture_output=True, text=True, cwd=ROOT, timeout=120
        )
        assert stopped.returncode == 0, f"scripts/userns-engine.sh stop failed:\n{stopped.stderr[-4000:]}"


@pytest.fixture(scope="module")
def remapped_client(remapped_host: str) -> Iterator[docker.DockerClient]:
    """A client of the remapped engine; after the module, no sandbox container may be left on it."""
    client = docker.DockerClient(base_url=remapped_host)
    yield client
    deadline = time.monotonic() + 10  # a cancelled run removes its container shielded, but in a thread
    while leftovers := client.containers.list(all=True, sparse=True, filters={"label": LABEL}):
        assert time.monotonic() < deadline, f"left behind: {[c.name for c in leftovers]}"
        time.sleep(0.2)
    client.close()


@pytest.fixture(scope="module")
def remapped(remapped_host: str, remapped_client: docker.DockerClient) -> Sandbox:
    """A cold sandbox on the remapped engine, configured as an operator would: by engine.docker_host."""
    settings = Settings(engine=EngineSettings(docker_host=remapped_host, pool_size=0))
    sandbox = Sandbox(settings, DockerEngine(settings.engine, client=remapped_client))
    assert sandbox.engine_health().problems == []  # the remapped engine answers and has the image
    return sandbox


async def probe(sandbox: Sandbox) -> dict[str, Any]:
    """The posture probe's report from a run in ``sandbox``."""
    result = await sandbox.run(snippet(POSTURE_PROBE))
    assert result.exit_code == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture(scope="module")
async def remapped_posture(remapped: Sandbox) -> dict[str, Any]:
    return await probe(remapped)


@pytest.fixture(scope="module")
async def normal_posture(engine: DockerEngine) -> dict[str, Any]:
    return await probe(cold_sandbox(engine))


def host_id_of(inside: int, id_map: list[list[int]]) -> int:
    """The host id that ``inside`` is, through a /proc/PID/uid_map-style map (doctor's reading)."""
    found = host_id(inside, id_map)
    assert found is not None, f"{inside} is not mapped by {id_map}"
    return found


def accounts(path: str) -> set[int]:
    """The ids of every entry of /etc/passwd or /etc/group."""
    with open(path) as lines:
        return {int(line.split(":")[2]) for line in lines if line.count(":") >= 3}


async def test_the_probe_reports_a_private_id_map_only_under_remapping(
    remapped_posture: dict[str, Any], normal_posture: dict[str, Any]
) -> None:
    assert normal_posture["uid_map"] == normal_posture["gid_map"] == HOST_IDS
    for key in ("uid_map", "gid_map"):
        assert len(remapped_posture[key]) == 1, remapped_posture[key]
        inside, outside, count = remapped_posture[key][0]
        assert inside == 0
        assert outside != 0  # root in the container is not the host's root
        assert count < 2**32 - 1
        assert count > SANDBOX_UID  # uid 1000 is inside the range
    # The range is dockremap's, from /etc/subuid and /etc/subgid.
    for key, path in (("uid_map", "/etc/subuid"), ("gid_map", "/etc/subgid")):
        with open(path) as lines:
            ranges = [line.strip().split(":") for line in lines if line.startswith("dockremap:")]
        assert [[0, int(start), int(count)] for _, start, count in ranges] == remapped_posture[key]


async def test_the_sandbox_runs_as_an_unmapped_host_uid(
    remapped: Sandbox, remapped_client: docker.DockerClient, remapped_posture: dict[str, Any]
) -> None:
    host_uid = host_id_of(SANDBOX_UID, remapped_posture["uid_map"])
    host_gid = host_id_of(SANDBOX_UID, remapped_posture["gid_map"])
    assert host_uid != 0
    assert host_uid not in accounts("/etc/passwd"), f"uid {host_uid} belongs to an account on the host"
    assert host_gid not in accounts("/etc/group"), f"gid {host_gid} belongs to a group on the host"

    seen: dict[int, tuple[list[int], list[int]]] = {}
    async with anyio.create_task_group() as group:
        group.start_soon(remapped.run, snippet("import time\ntime.sleep(60)"))
        with anyio.fail_after(20):
            while ["python3", "main.py"] not in record_processes(remapped_client, seen):
                await anyio.sleep(0.1)
        group.cancel_scope.cancel()  # the run is cancelled; its container is removed
    # Every process of the sandbox, seen from the host: docker-init, the launcher, the program.
    assert len(seen) >= 3, seen
    for pid, (uids, gids) in seen.items():
        assert uids == [host_uid] * 4, f"host pid {pid}: Uid {uids}"
        assert gids == [host_gid] * 4, f"host pid {pid}: Gid {gids}"


def record_processes(
    client: docker.DockerClient, seen: dict[int, tuple[list[int], list[int]]]
) -> list[list[str]]:
    """Record the host ids of every running sandbox's processes (host view, from `docker top`) in
    ``seen``, by host pid; return their command lines."""
    commands = []
    for container in client.containers.list(filters={"label": LABEL}):
        top = container.top()
        titles = top["Titles"]
        for row in top["Processes"] or []:
            process = dict(zip(titles, row, strict=True))
            try:
                seen[int(process["PID"])] = host_ids(int(process["PID"]))
            except FileNotFoundError:
                continue  # it ended meanwhile
            commands.append(process["CMD"].split())
    return commands


async def test_the_rest_of_the_posture_holds(
    remapped_posture: dict[str, Any], normal_posture: dict[str, Any]
) -> None:
    differing = {key for key in normal_posture if normal_posture[key] != remapped_posture[key]}
    assert differing <= EXPECTED_DIFFERENCES, {key: remapped_posture[key] for key in differing}
    posture = remapped_posture
    assert (posture["uid"], posture["euid"], posture["gid"]) == (1000, 1000, 1000)
    assert set(posture["capabilities"].values()) == {"0000000000000000"}
    assert (posture["no_new_privs"], posture["seccomp"]) == ("1", "2")
    assert (posture["interfaces"], posture["routes"], posture["dns"]) == (["lo"], [], "gaierror")
    assert posture["root_write"] == "EROFS"
    assert "ro" in posture["root_mount"]
    host_uid = host_id_of(SANDBOX_UID, posture["uid_map"])
    for mount in ("work_mount", "tmp_mount", "shm_mount"):
        # The tmpfs's owner shows as the host uid: the engine mounts it from outside the namespace.
        assert {"rw", "noexec", "nosuid", "nodev", f"uid={host_uid}"} <= set(posture[mount]), mount
    assert posture["cgroup_writable"] == posture["release_agent_writable"] == []
    assert posture["unshare_user"] == posture["setuid_0"] == "EPERM"


def test_doctor_shows_the_host_uid_the_sandbox_runs_as(
    remapped_host: str, remapped_posture: dict[str, Any]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent_sandbox", "doctor"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AGENT_SANDBOX_ENGINE__DOCKER_HOST": remapped_host},
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    host_uid = host_id_of(SANDBOX_UID, remapped_posture["uid_map"])
    assert f"ok    posture    uid 1000 (host uid {host_uid}: user namespace remapped), " in done.stdout


async def test_gvisor_on_the_remapped_engine_runs_its_gofer_as_an_unmapped_uid(
    remapped_host: str, remapped_client: docker.DockerClient, remapped_posture: dict[str, Any]
) -> None:
    """The two walls together (configs/strict.toml on a remapped engine). gVisor's Sentry runs as
    uid 65534 either way; its gofer, which opens files for the sandbox, runs as the host's root on
    a plain engine and as the remapped root N here."""
    engine = DockerEngine(EngineSettings(docker_host=remapped_host), client=remapped_client)
    skip_unless_offered(engine, GVISOR, "the remapped engine (scripts/userns-engine.sh registers it)")
    strict = load_settings(ROOT / "configs" / "strict.toml")
    settings = strict.model_copy(
        update={"engine": strict.engine.model_copy(update={"docker_host": remapped_host, "pool_size": 0})}
    )
    sandbox = Sandbox(settings, engine)
    report = await probe(sandbox)
    assert report["uid"] == SANDBOX_UID
    remapped_root = host_id_of(0, remapped_posture["uid_map"])
    async with anyio.create_task_group() as group:
        group.start_soon(sandbox.run, snippet("import time\ntime.sleep(60)"))
        with anyio.fail_after(20):
            while not (running := remapped_client.containers.list(filters={"label": LABEL})):
                await anyio.sleep(0.1)
        (container,) = running
        sentry = container.attrs["State"]["Pid"]
        gofers = gvisor_gofers(container.id)
        assert host_ids(sentry)[0] == [65534] * 4
        assert gofers, "no runsc-gofer process for the container"
        for gofer in gofers:
            assert host_ids(gofer)[0] == [remapped_root] * 4, f"gofer {gofer}"
        group.cancel_scope.cancel()
