"""The sandbox's security posture, measured from INSIDE a real container by
src/agent_sandbox/probes/posture.py. Each test is one claim of SECURITY.md. Runs cold and warm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import pytest
from mcp import Client, StdioServerParameters

from agent_sandbox.engine.docker import LABEL, DockerEngine
from agent_sandbox.probes import POSTURE_PROBE
from agent_sandbox.sandbox import Sandbox
from tests.helpers import RUNTIMES, runtime_or_skip, snippet, while_running

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parents[2]
NO_CAPABILITIES = "0000000000000000"


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest, engine: DockerEngine) -> str:
    """Every test here holds under runc and under gVisor."""
    return runtime_or_skip(request, engine)


@pytest.fixture
async def posture(sandbox: Sandbox) -> dict[str, Any]:
    result = await sandbox.run(snippet(POSTURE_PROBE))
    assert result.exit_code == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


async def test_a_non_root_user_with_no_extra_groups(posture: dict[str, Any]) -> None:
    assert (posture["uid"], posture["euid"], posture["gid"]) == (1000, 1000, 1000)
    assert set(posture["groups"]) <= {1000}


async def test_no_capability_in_any_set(posture: dict[str, Any]) -> None:
    assert posture["capabilities"] == dict.fromkeys(
        ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"], NO_CAPABILITIES
    )


async def test_no_new_privileges_and_a_seccomp_filter(posture: dict[str, Any]) -> None:
    assert posture["no_new_privs"] == "1"
    assert posture["seccomp"] == "2"  # filter mode


async def test_no_network_only_loopback_no_routes_no_dns(posture: dict[str, Any]) -> None:
    assert posture["interfaces"] == ["lo"]
    assert posture["routes"] == []
    assert posture["dns"] == "gaierror"


async def test_no_runtime_socket_and_no_kubernetes_token(posture: dict[str, Any]) -> None:
    assert posture["runtime_sockets"] == []


async def test_the_environment_holds_only_what_the_sandbox_sets(posture: dict[str, Any]) -> None:
    assert set(posture["environment"]) <= {
        "PATH", "HOME", "LANG", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "MPLBACKEND", "HOSTNAME",
        "XDG_CACHE_HOME", "MPLCONFIGDIR",
    }  # fmt: skip


async def test_the_root_filesystem_is_read_only(posture: dict[str, Any]) -> None:
    assert posture["root_write"] == "EROFS"
    assert "ro" in posture["root_mount"]


async def test_work_and_tmp_are_noexec_nosuid(posture: dict[str, Any]) -> None:
    for mount in ("work_mount", "tmp_mount"):
        assert {"rw", "noexec", "nosuid", "nodev"} <= set(posture[mount]), mount
    assert posture["exec_from_work"] == "EACCES"
    assert posture["exec_from_tmp"] == "EACCES"


async def test_no_writable_kernel_or_cgroup_controls(posture: dict[str, Any]) -> None:
    assert posture["proc_sys_writable"] == []
    assert posture["core_pattern_write"] in {"EROFS", "EACCES", "EPERM"}
    assert posture["sysrq_write"] in {"EROFS", "EACCES", "EPERM", "ENOENT"}
    assert posture["cgroup_writable"] == []
    assert posture["release_agent_writable"] == []
    assert posture["cgroup_mounts"], "no cgroup filesystem found"
    for mount, options in posture["cgroup_mounts"].items():
        assert "ro" in options, mount
    assert "ro" in posture["sys_mount"]


async def test_no_block_kvm_or_memory_devices(posture: dict[str, Any]) -> None:
    assert posture["devices"] == []
    assert posture["shm"] is False  # ipc_mode none


@pytest.mark.parametrize(
    "action", ["setuid_0", "chroot", "mknod", "mount", "unshare_user", "unshare_mount", "unshare_net"]
)
async def test_privileged_operations_fail(posture: dict[str, Any], action: str) -> None:
    assert posture[action] in {"EPERM", "EACCES"}, f"{action}: {posture[action]}"


async def test_etc_shadow_is_unreadable(posture: dict[str, Any]) -> None:
    assert posture["shadow_read"] == "EACCES"


async def test_a_private_pid_and_cgroup_namespace(posture: dict[str, Any]) -> None:
    assert posture["pid_1"] == "/sbin/docker-init"  # not the host's init
    assert posture["process_count"] < 10  # init, launcher, the probe: nothing of the host
    assert posture["cgroup_paths"] == ["/"]


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
