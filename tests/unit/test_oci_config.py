"""The OCI backend's bundle config, checked against the Docker backend's options (no runtime
needed): the same container, whichever starts it. tests/integration/test_posture.py measures it
from inside a real one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from agent_sandbox.config import ConfigError, load_settings
from agent_sandbox.engine.docker import container_options
from agent_sandbox.engine.launch import launcher_command
from agent_sandbox.engine.oci import PreparedImage, oci_config
from agent_sandbox.engine.spec import PackageMount
from tests.unit.test_container_options import SHAPE

IMAGE = PreparedImage(Path("/var/lib/agent-sandbox/oci/abc/rootfs"), ("MPLBACKEND=Agg", "HOME=/root"))


def config(**shape: Any) -> dict[str, Any]:
    return oci_config(dataclasses.replace(SHAPE, **shape), IMAGE, "agent-sandbox-0123456789ab", "h/pidns:1:2")


def mounts(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {mount["destination"]: mount for mount in found["mounts"]}


def test_the_process_is_docker_s_unprivileged_launcher_under_tini() -> None:
    process = config()["process"]
    docker = container_options(SHAPE, owner="h:1")
    assert process["args"] == ["/sbin/docker-init", "--", *launcher_command(relay_output=False)]
    assert process["args"][2:] == docker["command"]
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000]}
    assert process["capabilities"] == {}
    assert process["noNewPrivileges"] is True
    assert process["cwd"] == docker["working_dir"]


def test_the_environment_is_the_image_s_with_the_sandbox_s_on_top() -> None:
    env = dict(line.split("=", 1) for line in config()["process"]["env"])
    docker = container_options(SHAPE, owner="h:1")["environment"]
    assert env == {**docker, "MPLBACKEND": "Agg", "HOSTNAME": "0123456789ab"}


def test_the_limits_are_docker_s() -> None:
    found = config()
    docker = container_options(SHAPE, owner="h:1")
    resources = found["linux"]["resources"]
    assert resources["memory"]["limit"] == resources["memory"]["swap"] == docker["mem_limit"]
    assert resources["pids"]["limit"] == docker["pids_limit"]
    assert resources["cpu"] == {"shares": 1024, "quota": 100_000, "period": 100_000}
    rlimits = {rlimit["type"]: (rlimit["soft"], rlimit["hard"]) for rlimit in found["process"]["rlimits"]}
    assert rlimits == {
        f"RLIMIT_{ulimit['Name'].upper()}": (ulimit["Soft"], ulimit["Hard"]) for ulimit in docker["ulimits"]
    }


def test_offline_read_only_and_in_namespaces_of_its_own() -> None:
    found = config()
    assert found["root"] == {"path": str(IMAGE.rootfs), "readonly": True}
    kinds = {namespace["type"] for namespace in found["linux"]["namespaces"]}
    assert kinds == {"mount", "network", "uts", "pid", "ipc", "cgroup"}  # network: only loopback
    assert "user" not in kinds  # uid 1000 is uid 1000 on the host, as under Docker without remap
    assert found["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "/proc/kcore" in found["linux"]["maskedPaths"]
    assert "/proc/sys" in found["linux"]["readonlyPaths"]


def test_scratch_space_is_docker_s_tmpfs_and_only_packages_may_hold_programs() -> None:
    docker = container_options(SHAPE, owner="h:1")["tmpfs"]
    found = mounts(config())
    for where, options in docker.items():
        assert found[where]["type"] == "tmpfs"
        assert set(options.split(",")) <= set(found[where]["options"])
    with_packages = mounts(config(packages=PackageMount("/var/cache/wheels/run", 256)))
    assert "exec" in with_packages["/packages"]["options"]
    assert with_packages["/wheels"]["source"] == "/var/cache/wheels/run"
    assert "ro" in with_packages["/wheels"]["options"]
    assert "/dev/shm" not in mounts(config(shm_mib=0))


def test_the_owner_is_written_on_the_bundle_so_a_later_process_can_reap_it() -> None:
    assert config()["annotations"] == {"io.agent-sandbox.owner": "h/pidns:1:2"}


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [("RUNTIME", "runsc", "engine.runtime 'runsc'"), ("NETWORK", "bridge", "engine.network")],
)
def test_the_oci_backend_refuses_what_only_docker_gives(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str, named: str
) -> None:
    monkeypatch.setenv("AGENT_SANDBOX_ENGINE__BACKEND", "oci")
    monkeypatch.setenv(f"AGENT_SANDBOX_ENGINE__{key}", value)
    with pytest.raises(ConfigError, match=named) as refused:
        load_settings(None)
    assert 'engine.backend = "docker"' in str(refused.value)
