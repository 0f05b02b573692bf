"""The hardening the container spec promises, observed from inside a real container."""

from __future__ import annotations

import json

import pytest

from agent_sandbox.sandbox import Sandbox
from tests.helpers import snippet

pytestmark = pytest.mark.anyio

PROBE = r"""
import errno, json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
mounts = {f[1]: f[3].split(",") for f in (l.split() for l in open("/proc/mounts"))}
def write_fails(path):
    try:
        open(path, "w").close()
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "written"
def first(*paths):  # cgroup v1, then v2
    for path in paths:
        if os.path.exists(path):
            return open(path).read().strip()
def run_file_directly():
    import subprocess
    open("/work/tool.sh", "w").write("#!/bin/sh\necho ran\n")
    os.chmod("/work/tool.sh", 0o755)
    try:
        return subprocess.run(["/work/tool.sh"]).returncode
    except PermissionError:
        return "EACCES"
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(),
    "cap_bnd": status["CapBnd"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
    "interfaces": sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]),
    "root_write": write_fails("/etc/owned"), "usr_write": write_fails("/usr/owned"),
    "work": mounts["/work"], "tmp": mounts["/tmp"], "root": mounts["/"],
    "shm": os.path.exists("/dev/shm"),
    "exec_from_work": run_file_directly(),
    "memory_limit": int(first("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max")),
    "pids_limit": first("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"),
    "nofile": os.sysconf("SC_OPEN_MAX"),
    "pid1": open("/proc/1/cmdline").read().split("\0")[0],
}))
"""


@pytest.fixture
async def posture(sandbox: Sandbox) -> dict[str, object]:
    result = await sandbox.run(snippet(PROBE))
    assert result.exit_code == 0, result.stderr
    probe: dict[str, object] = json.loads(result.stdout)
    return probe


async def test_runs_as_uid_1000_with_no_extra_groups(posture: dict[str, object]) -> None:
    assert (posture["uid"], posture["gid"]) == (1000, 1000)
    assert set(posture["groups"]) <= {1000}  # type: ignore[call-overload]


async def test_no_capabilities_no_new_privileges_and_seccomp_filtering(posture: dict[str, object]) -> None:
    assert posture["cap_eff"] == posture["cap_prm"] == posture["cap_bnd"] == "0000000000000000"
    assert posture["no_new_privs"] == "1"
    assert posture["seccomp"] == "2"


async def test_only_the_loopback_interface_exists(posture: dict[str, object]) -> None:
    assert posture["interfaces"] == ["lo"]


async def test_the_root_filesystem_is_read_only(posture: dict[str, object]) -> None:
    assert posture["root_write"] == "EROFS"
    assert posture["usr_write"] == "EROFS"
    assert "ro" in posture["root"]  # type: ignore[operator]


async def test_work_and_tmp_are_noexec_nosuid_nodev_tmpfs(posture: dict[str, object]) -> None:
    for mount in ("work", "tmp"):
        assert {"rw", "nosuid", "nodev", "noexec"} <= set(posture[mount])  # type: ignore[arg-type]
    assert posture["exec_from_work"] == "EACCES"


async def test_limits_are_applied_by_the_kernel(posture: dict[str, object]) -> None:
    assert posture["memory_limit"] == 1024 * 1024 * 1024
    assert posture["pids_limit"] == "128"
    assert posture["nofile"] == 1024


async def test_no_shared_memory_and_an_init_as_pid_1(posture: dict[str, object]) -> None:
    assert posture["shm"] is False
    assert "init" in str(posture["pid1"])
