"""The sandbox's security posture, measured from INSIDE a real container by
src/agent_sandbox/probes/posture.py. Each test is one claim of SECURITY.md. Runs cold and warm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest
from mcp import Client, StdioServerParameters

from agent_sandbox.config import GVISOR, Settings
from agent_sandbox.engine.docker import LABEL, DockerEngine
from agent_sandbox.engine.kubernetes import KubernetesEngine
from agent_sandbox.engine.oci import OciEngine
from agent_sandbox.probes import POSTURE_PROBE
from agent_sandbox.sandbox import Sandbox
from tests.helpers import (
    KUBERNETES,
    OCI,
    PROFILES,
    TEST_NAMESPACE,
    gvisor_gofers,
    host_ids,
    host_status,
    profile_or_skip,
    snippet,
    while_running,
)

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parents[2]
NO_CAPABILITIES = "0000000000000000"


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest, engine: DockerEngine) -> Settings:
    """Every claim is checked under the default profile (runc), the strict one (gVisor), the
    default's sandboxes started by runc without Docker (OCI) and as pods on the Kubernetes test
    cluster."""
    return profile_or_skip(request, engine)


@pytest.fixture
def kubernetes(profile: Settings) -> bool:
    """On Kubernetes the sandbox is a pod: the pod spec gives most of what Docker's options do,
    and where it cannot, the tests say what holds instead and why (docs/kubernetes.md)."""
    return profile.engine.backend == KUBERNETES


@pytest.fixture
def gvisor(profile: Settings) -> bool:
    """Under gVisor the program talks to gVisor's kernel (the Sentry), not the host's: where its
    view differs, the tests say what holds there and why."""
    return profile.engine.runtime == GVISOR


@pytest.fixture
async def posture(sandbox: Sandbox) -> dict[str, Any]:
    result = await sandbox.run(snippet(POSTURE_PROBE))
    assert result.exit_code == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


async def test_a_non_root_user_with_no_extra_groups(posture: dict[str, Any]) -> None:
    assert (posture["uid"], posture["euid"], posture["gid"]) == (1000, 1000, 1000)
    assert set(posture["groups"]) <= {1000}


async def test_no_capability_in_any_set(posture: dict[str, Any], gvisor: bool) -> None:
    sets = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]
    shown = {name: mask for name, mask in posture["capabilities"].items() if mask}
    # gVisor's /proc has no CapAmb line; the four it shows must be empty all the same.
    assert shown == dict.fromkeys(sets[:4] if gvisor else sets, NO_CAPABILITIES)


async def test_no_new_privileges_and_a_seccomp_filter(posture: dict[str, Any], gvisor: bool) -> None:
    if gvisor:
        # The program's calls never reach the host kernel, so there is no filter on it to show;
        # the Sentry serving them has both (test_seen_from_the_host_the_sandbox_is_confined).
        assert (posture["no_new_privs"], posture["seccomp"]) == ("", "0")
        return
    assert posture["no_new_privs"] == "1"
    assert posture["seccomp"] == "2"  # filter mode


async def test_no_network_only_loopback_no_routes_no_dns(posture: dict[str, Any]) -> None:
    assert posture["interfaces"] == ["lo"]
    assert posture["routes"] == []
    assert posture["dns"] == "gaierror"


async def test_no_runtime_socket_and_no_kubernetes_token(posture: dict[str, Any]) -> None:
    assert posture["runtime_sockets"] == []


async def test_the_environment_holds_only_what_the_sandbox_sets(posture: dict[str, Any]) -> None:
    """AGENT_SANDBOX_POSTMORTEM names the run's own post-mortem socket (the image's hook reads it)."""
    assert set(posture["environment"]) <= {
        "PATH", "HOME", "LANG", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "MPLBACKEND", "HOSTNAME",
        "XDG_CACHE_HOME", "MPLCONFIGDIR", "AGENT_SANDBOX_POSTMORTEM",
    }  # fmt: skip


async def test_the_root_filesystem_is_read_only(posture: dict[str, Any]) -> None:
    assert posture["root_write"] == "EROFS"
    assert "ro" in posture["root_mount"]


async def test_work_and_tmp_are_noexec_nosuid(
    posture: dict[str, Any], gvisor: bool, kubernetes: bool
) -> None:
    if kubernetes:
        # A pod's emptyDir is mounted with no flags, and no pod field sets them: a file the
        # program writes there can be executed. nosuid and nodev lose nothing (no new privileges;
        # no capability to make a device node: see mknod); noexec is a wall Kubernetes lacks.
        for mount in ("work_mount", "tmp_mount"):
            assert {"rw", "noexec"} & set(posture[mount]) == {"rw"}, mount
        assert (posture["exec_from_work"], posture["exec_from_tmp"]) == ("ok", "ok")
        return
    # gVisor lists only noexec among the flags; with exec refused and every file there owned by
    # uid 1000, nosuid has nothing left to stop, and its devices are its own (see mknod).
    flags = {"rw", "noexec"} if gvisor else {"rw", "noexec", "nosuid", "nodev"}
    for mount in ("work_mount", "tmp_mount"):
        assert flags <= set(posture[mount]), mount
    assert posture["exec_from_work"] == "EACCES"
    assert posture["exec_from_tmp"] == "EACCES"


async def test_no_writable_kernel_or_cgroup_controls(posture: dict[str, Any], gvisor: bool) -> None:
    assert posture["proc_sys_writable"] == []
    assert posture["core_pattern_write"] in {"EROFS", "EACCES", "EPERM"}
    assert posture["sysrq_write"] in {"EROFS", "EACCES", "EPERM", "ENOENT"}
    assert posture["cgroup_writable"] == []
    assert posture["release_agent_writable"] == []
    assert "ro" in posture["sys_mount"]
    if gvisor:
        assert posture["cgroup_mounts"] == {}  # gVisor mounts no cgroup filesystem at all
        return
    assert posture["cgroup_mounts"], "no cgroup filesystem found"
    for mount, options in posture["cgroup_mounts"].items():
        assert "ro" in options, mount


async def test_no_block_kvm_or_memory_devices(posture: dict[str, Any], gvisor: bool) -> None:
    # gVisor's own /dev has its FUSE device (mounting needs CAP_SYS_ADMIN): not a host device.
    assert posture["devices"] == (["fuse"] if gvisor else [])


async def test_shared_memory_is_a_private_tmpfs_in_an_ipc_namespace_of_its_own(
    posture: dict[str, Any], profile: Settings, gvisor: bool, kubernetes: bool
) -> None:
    """multiprocessing needs /dev/shm: the sandbox's own tmpfs, sized and counted in its memory
    like /work, in an IPC namespace that is not the host's (nsfs inode numbers are host-wide, so
    the probe's differs from this process's). gVisor shows no /proc/self/ns: its IPC namespace
    lives in its own kernel, which the host's never sees."""
    assert posture["shm_mib"] == profile.limits.shm_mib
    flags = {"rw", "noexec"} if gvisor else {"rw", "noexec", "nosuid", "nodev"}  # as for /work
    if kubernetes:
        flags = {"rw"}  # an emptyDir, as /work (see test_work_and_tmp_are_noexec_nosuid)
    assert flags <= set(posture["shm_mount"])
    if gvisor:
        assert posture["ipc_namespace"] is None
        return
    assert posture["ipc_namespace"] not in (None, os.stat("/proc/self/ns/ipc").st_ino)


# gVisor grants these to uid 1000 inside its own kernel: a user namespace (and, in it, mount and
# network namespaces of gVisor's netstack, which has no interface to the host) and device nodes
# that open gVisor's emulated devices. The host kernel never sees the calls.
GRANTED_BY_GVISOR = {"mknod", "unshare_user", "unshare_mount", "unshare_net"}


@pytest.mark.parametrize(
    "action", ["setuid_0", "chroot", "mknod", "mount", "unshare_user", "unshare_mount", "unshare_net"]
)
async def test_privileged_operations_fail(posture: dict[str, Any], action: str, gvisor: bool) -> None:
    if gvisor and action in GRANTED_BY_GVISOR:
        assert posture[action] == "ok", f"{action}: gVisor changed; see GRANTED_BY_GVISOR"
        return
    assert posture[action] in {"EPERM", "EACCES"}, f"{action}: {posture[action]}"


async def test_etc_shadow_is_unreadable(posture: dict[str, Any]) -> None:
    assert posture["shadow_read"] == "EACCES"


async def test_a_private_pid_and_cgroup_namespace(
    posture: dict[str, Any], gvisor: bool, kubernetes: bool
) -> None:
    if kubernetes:
        # The launcher is PID 1 of the container's own PID namespace (a pod has no init): the
        # kernel then never delivers the program's SIGSTOP or SIGKILL to it. Kubernetes 1.20 on
        # cgroup v1 gives no cgroup namespace, so the program sees its pod's cgroup path (read-only:
        # test_no_writable_kernel_or_cgroup_controls); newer clusters on cgroup v2 do give one.
        assert posture["pid_1"] == "python3"
        assert posture["process_count"] < 10  # the launcher and the probe
        (path,) = posture["cgroup_paths"]
        assert path.startswith("/kubepods/")
        return
    assert posture["pid_1"] == "/sbin/docker-init"  # not the host's init
    assert posture["process_count"] < 10  # init, launcher, the probe: nothing of the host
    assert posture["cgroup_paths"] == ([] if gvisor else ["/"])  # gVisor has no cgroups inside


async def test_the_user_namespace_mapping_is_reported(posture: dict[str, Any]) -> None:
    """Without userns-remap, uid 1000 inside is uid 1000 on the host (gVisor's kernel reports its
    own identity map); tests/integration/test_userns_remap.py runs an engine that remaps."""
    assert posture["uid_map"] == posture["gid_map"] == [[0, 0, 4294967295]]


async def test_seen_from_the_host_the_sandbox_is_confined(
    request: pytest.FixtureRequest, profile: Settings, docker_client: docker.DockerClient, gvisor: bool
) -> None:
    """The processes the engine started, read from the host's /proc (one cold sandbox, so the only
    container running is the run's). Under runc: the program's init, uid 1000 with no
    capabilities, no-new-privileges and seccomp. Under gVisor: the Sentry, which serves the
    program's system calls, as uid 65534 in a user namespace of its own where no other id is
    mapped, with no-new-privileges and a seccomp filter of its own; and its gofer, which opens
    files for it, under seccomp, as the host's root (userns-remap makes it the remapped root:
    tests/integration/test_userns_remap.py)."""
    settings = profile.model_copy(update={"engine": profile.engine.model_copy(update={"pool_size": 0})})
    if settings.engine.backend == KUBERNETES:  # the pod's launcher, found by its container id
        engine = request.getfixturevalue("kubernetes_engine")
        async with anyio.create_task_group() as group:
            group.start_soon(Sandbox(settings, engine).run, snippet("import time\ntime.sleep(30)"))
            with anyio.fail_after(20):
                while not (pid := await anyio.to_thread.run_sync(running_pod_launcher, engine)):
                    await anyio.sleep(0.1)
            status = host_status(pid)
            assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")
            assert host_ids(pid)[0] == [1000] * 4
            assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == NO_CAPABILITIES
            group.cancel_scope.cancel()
        return
    if settings.engine.backend == OCI:  # the container's init, as runc's state names it
        oci_engine = request.getfixturevalue("oci_engine")
        async with anyio.create_task_group() as group:
            group.start_soon(Sandbox(settings, oci_engine).run, snippet("import time\ntime.sleep(30)"))
            with anyio.fail_after(20):
                while not (pid := await anyio.to_thread.run_sync(running_oci_init, oci_engine)):
                    await anyio.sleep(0.1)
            status = host_status(pid)
            assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")
            assert host_ids(pid)[0] == [1000] * 4
            assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == NO_CAPABILITIES
            assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
            group.cancel_scope.cancel()
        return
    sandbox = Sandbox(settings, request.getfixturevalue("engine"))
    async with anyio.create_task_group() as group:
        group.start_soon(sandbox.run, snippet("import time\ntime.sleep(30)"))
        with anyio.fail_after(20):
            while not (
                running := docker_client.containers.list(filters={"label": LABEL, "status": "running"})
            ):
                await anyio.sleep(0.1)
        (container,) = running
        pid = container.attrs["State"]["Pid"]
        status = host_status(pid)
        assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")
        own_namespace = os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
        if gvisor:
            assert host_ids(pid)[0] == [65534] * 4
            assert own_namespace
            assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["65534", "65534", "1"]
            gofers = gvisor_gofers(container.id)
            assert gofers, "no runsc-gofer process for the container"
            for gofer in gofers:
                assert host_status(gofer)["Seccomp"] == "2"
                assert host_ids(gofer)[0] == [0] * 4  # the host's root, with a few capabilities
        else:
            assert host_ids(pid)[0] == [1000] * 4
            assert status["CapEff"] == status["CapPrm"] == NO_CAPABILITIES
        group.cancel_scope.cancel()


def running_oci_init(engine: OciEngine) -> int | None:
    """The host pid of the init of the one OCI container of ours that runs, if there is one yet."""
    bundles = list(engine.bundles.glob("*")) if engine.bundles.exists() else []
    if len(bundles) != 1:
        return None
    state = subprocess.run(
        ["runc", "--root", str(engine.state_root), "state", bundles[0].name], capture_output=True, check=False
    )
    if state.returncode != 0 or json.loads(state.stdout)["status"] != "running":
        return None
    return int(json.loads(state.stdout)["pid"])


def running_pod_launcher(engine: KubernetesEngine) -> int | None:
    """The host pid of the launcher of the one sandbox pod of ours that runs, if there is one yet:
    the process in that container's cgroup that the container started."""
    names = engine.our_pods()
    if not names:
        return None
    (name,) = names
    statuses = engine.api.read_namespaced_pod_status(name, TEST_NAMESPACE).status.container_statuses or []
    ids = [status.container_id.rpartition("/")[2] for status in statuses if status.container_id]
    if not ids:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            in_container = ids[0] in Path(f"/proc/{pid}/cgroup").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if in_container and command[:4] == [b"python3", b"-I", b"-S", b"-c"]:
            return int(pid)
    return None


async def test_a_secret_in_the_servers_environment_never_reaches_the_program() -> None:
    secret = "sk-agent-sandbox-test-7f3a9c"
    parameters = StdioServerParameters(
        command=sys.executable,
        args=["-m", "agent_sandbox", "serve"],
        cwd=str(ROOT),
        env={**os.environ, "DEPLOYMENT_API_KEY": secret},
    )
    code = (
        "import os\n"
        "found = [k for k, v in os.environ.items() if 'sk-agent' in v or k == 'DEPLOYMENT_API_KEY']\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        if b'sk-agent' in open(f'/proc/{pid}/environ', 'rb').read():\n"
        "            found.append(pid)\n"
        "    except OSError:\n"
        "        pass\n"
        "print(found)"
    )
    async with Client(parameters) as client:
        result = await client.call_tool("run_python", {"code": code})
        async with while_running(client, "import time\ntime.sleep(30)") as call:
            # What the engine was told to set, seen from the host: more than the program can read.
            for container in docker.from_env().containers.list(filters={"label": LABEL}):
                assert not [item for item in container.attrs["Config"]["Env"] if secret in item]
            call.cancel_scope.cancel()
    assert result.structured_content is not None
    assert result.structured_content["stdout"] == "[]\n"
    assert secret not in json.dumps(result.structured_content)


def test_the_probe_is_plain_standard_library_python() -> None:
    probe = ROOT / "src" / "agent_sandbox" / "probes" / "posture.py"
    done = subprocess.run([sys.executable, "-I", "-c", f"import ast; ast.parse(open({str(probe)!r}).read())"])
    assert done.returncode == 0
