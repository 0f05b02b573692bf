"""Helpers shared by tests: building requests and reading results."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskGroup
from mcp import Client
from pydantic import BaseModel

from agent_sandbox.config import EngineSettings, Settings, load_settings
from agent_sandbox.engine.base import Engine
from agent_sandbox.engine.docker import OWNER_LABEL, DockerEngine
from agent_sandbox.engine.kubernetes import OWNER_LABEL as POD_OWNER_LABEL
from agent_sandbox.engine.kubernetes import KubernetesEngine, owner_digest
from agent_sandbox.engine.launch import owner_id
from agent_sandbox.engine.oci import OciEngine
from agent_sandbox.models import LimitRequest, ProjectFile, RunRequest, RunResult
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server.progress import STAGE_MESSAGES

SandboxFactory = Callable[..., Awaitable[Sandbox]]
ROOT = Path(__file__).parents[1]
# configs/NAME.toml: the default (runc), the strict profile (gVisor, smaller limits), the
# default's sandboxes started by runc without Docker (OCI) and as pods on the Kubernetes test
# cluster (scripts/ensure-cluster.sh), and the default on CPython 3.13 (Debian trixie's).
KUBERNETES = "kubernetes"
OCI = "oci"
PYTHON_313 = "python3.13"
PROFILES = ["default", "strict", OCI, KUBERNETES, PYTHON_313]
TEST_NAMESPACE = "agent-sandbox-test"  # the tests' sandbox pods live here, nothing else
TOOLS = {
    "run_python",
    "run_project",
    "run_batch",
    "workspace_create",
    "workspace_files",
    "workspace_read",
    "workspace_reset_state",
    "workspace_delete",
    "run_status",
    "run_result",
    "run_cancel",
    "runs_list",
}


def owned_by(pid: int) -> dict[str, str]:
    """A Docker filter for the containers the server process ``pid`` (on this host) made."""
    return {"label": f"{OWNER_LABEL}={owner_id(pid)}"}


def cold_sandbox(engine: DockerEngine, **sections: BaseModel) -> Sandbox:
    """A sandbox on ``engine`` with no warm pool and the given settings sections."""
    return Sandbox(Settings(engine=EngineSettings(pool_size=0), **sections), engine)  # type: ignore[arg-type]


def snippet(code: str, **fields: object) -> RunRequest:
    """A one-file request; ``limits`` may be given as a dict."""
    limits = fields.pop("limits", {})
    assert isinstance(limits, dict)
    return RunRequest(
        files=[ProjectFile(path="main.py", content=code)],
        limits=LimitRequest(**limits),
        **fields,  # type: ignore[arg-type]
    )


def kinds(result: RunResult) -> set[str]:
    return {v.kind.value for v in result.violations}


@asynccontextmanager
async def while_running(client: Client, code: str) -> AsyncIterator[TaskGroup]:
    """Call run_python with ``code`` in the background; enter once the program is running.

    Leaving waits for the call to end, unless the body cancels the yielded task group."""
    running = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message == STAGE_MESSAGES["running"]:
            running.set()

    async with anyio.create_task_group() as group:
        group.start_soon(
            lambda: client.call_tool("run_python", {"code": code}, progress_callback=on_progress)
        )
        await running.wait()
        yield group


def stdio_server(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`agent-sandbox serve` (stdio) as a subprocess whose stdin and stdout the test holds."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent_sandbox", "serve"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,  # only a few small replies: read or not, it never fills
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def profile_or_skip(request: pytest.FixtureRequest, engine: DockerEngine) -> Settings:
    """The shipped profile a ``profile`` fixture with ``params=PROFILES`` asks for; see
    ``skip_unless_offered`` and ``on_test_cluster``."""
    settings = load_settings(ROOT / "configs" / f"{request.param}.toml")
    if settings.engine.backend == KUBERNETES:
        return on_test_cluster(settings)
    if settings.engine.backend == OCI:  # runc, which Debian's docker.io always brings
        return settings
    skip_unless_offered(engine, settings.engine.runtime, f"configs/{request.param}.toml")
    return settings


def cluster_kubeconfig() -> str:
    """The Kubernetes test cluster's kubeconfig, which `scripts/ensure-cluster.sh run` hands to the
    tests; without one, skip, or fail if SANDBOX_TESTS_REQUIRE_RUNTIMES (CI) names kubernetes."""
    path = os.environ.get("SANDBOX_TESTS_KUBECONFIG", "")
    if not path:
        message = "no Kubernetes test cluster: run the tests under `scripts/ensure-cluster.sh run -- ...`"
        if KUBERNETES in os.environ.get("SANDBOX_TESTS_REQUIRE_RUNTIMES", "").split(","):
            pytest.fail(message)
        pytest.skip(message)
    return path


def on_test_cluster(settings: Settings) -> Settings:
    """``settings`` with the sandboxes on the test cluster: its kubeconfig, the tests' namespace,
    and images that are loaded into it, never pulled."""
    cluster = {
        "kubeconfig": cluster_kubeconfig(),
        "namespace": TEST_NAMESPACE,
        "image_pull_policy": "Never",
    }
    update = {"kubernetes": settings.kubernetes.model_copy(update=cluster)}
    return settings.model_copy(update=update)


@dataclass(frozen=True)
class Backend:
    """An engine backend as the tests drive it: the engine, default settings on it, and a look at
    its sandboxes from outside (by the process that owns them)."""

    name: str
    engine: Engine
    settings: Settings

    def sandboxes_of(self, pid: int | None = None) -> list[str]:
        """The containers' ids or the pods' names of the sandboxes process ``pid`` (this one) made."""
        if isinstance(self.engine, KubernetesEngine):
            selector = f"{POD_OWNER_LABEL}={owner_digest(owner_id(pid))}"
            pods = self.engine.api.list_namespaced_pod(TEST_NAMESPACE, label_selector=selector).items
            return [pod.metadata.name for pod in pods if pod.metadata and pod.metadata.name]
        if isinstance(self.engine, OciEngine):
            return self.engine.containers_of(owner_id(pid))
        assert isinstance(self.engine, DockerEngine)
        containers = self.engine.client.containers.list(
            all=True, sparse=True, filters=owned_by(pid or os.getpid())
        )
        return [container.id for container in containers if container.id]

    def kill(self, sandbox: str) -> None:
        """End a sandbox from outside, as a crash would: SIGKILL, or the pod deleted at once."""
        if isinstance(self.engine, KubernetesEngine):
            self.engine.api.delete_namespaced_pod(sandbox, TEST_NAMESPACE, grace_period_seconds=0)
            return
        if isinstance(self.engine, OciEngine):
            state_root = str(self.engine.state_root)
            subprocess.run([self.engine.runtime, "--root", state_root, "kill", sandbox, "KILL"], check=True)
            return
        assert isinstance(self.engine, DockerEngine)
        self.engine.client.containers.get(sandbox).kill()

    def server_env(self) -> dict[str, str]:
        """Environment for a server process (``stdio_server``) on this backend."""
        if self.name == OCI:
            return {"AGENT_SANDBOX_CONFIG": str(ROOT / "configs" / "oci.toml")}
        if self.name != KUBERNETES:
            return {}
        cluster = self.settings.kubernetes
        return {
            "AGENT_SANDBOX_CONFIG": str(ROOT / "configs" / "kubernetes.toml"),
            "AGENT_SANDBOX_KUBERNETES__KUBECONFIG": cluster.kubeconfig,
            "AGENT_SANDBOX_KUBERNETES__NAMESPACE": cluster.namespace,
            "AGENT_SANDBOX_KUBERNETES__IMAGE_PULL_POLICY": cluster.image_pull_policy,
        }


def skip_unless_offered(engine: DockerEngine, runtime: str, wanted_by: str) -> None:
    """Skip where the engine does not offer ``runtime`` (scripts/ensure-engine.sh registers runsc
    wherever Debian's package installs), or fail if SANDBOX_TESTS_REQUIRE_RUNTIMES (CI)
    names it."""
    if runtime and runtime not in offered_runtimes(engine):
        message = f"the Docker engine offers no {runtime} runtime ({wanted_by})"
        if runtime in os.environ.get("SANDBOX_TESTS_REQUIRE_RUNTIMES", "").split(","):
            pytest.fail(message)
        pytest.skip(message)


def offered_runtimes(engine: DockerEngine) -> tuple[str, ...]:
    """The OCI runtimes the engine offers, as its health reports them."""
    runtime = engine.health([], "").runtime
    assert runtime is not None, "no Docker engine answers"
    return runtime.offered


def host_status(pid: int) -> dict[str, str]:
    """The fields of a host process's /proc/PID/status (Uid, CapEff, Seccomp, ...)."""
    with open(f"/proc/{pid}/status") as lines:
        return dict(line.rstrip("\n").split(":\t", 1) for line in lines if ":\t" in line)


def host_ids(pid: int) -> tuple[list[int], list[int]]:
    """Real, effective, saved and filesystem uids and gids of host process ``pid``."""
    status = host_status(pid)
    return [int(n) for n in status["Uid"].split()], [int(n) for n in status["Gid"].split()]


def gvisor_gofers(container_id: str) -> list[int]:
    """Host pids of gVisor's gofer (the process that opens files for the sandbox) of a container."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # it ended meanwhile
        if command.startswith("runsc-gofer ") and container_id in command:
            found.append(int(name))
    return found
