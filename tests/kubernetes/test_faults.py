"""Faults of the cluster under a running job, on the real test cluster: the API server restarted,
the pod evicted, the node's kubelet lost. Each run fails with a clear error that says it was
the infrastructure, and no pod or container is left once the cluster is whole again. (The server
killed, its pods reaped at the next start: tests/integration/test_pool.py, on both backends.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agent_sandbox.config import Settings, load_settings
from agent_sandbox.engine.base import STDOUT
from agent_sandbox.engine.kubernetes import KubernetesEngine
from agent_sandbox.errors import EngineError
from agent_sandbox.sandbox import Sandbox
from tests.helpers import ROOT, TEST_NAMESPACE, on_test_cluster, snippet

pytestmark = pytest.mark.anyio

RUNTIME = Path(os.environ.get("R", "/run/agent-sandbox-kubernetes"))  # scripts/ensure-cluster.sh's
LONG_JOB = "import time\nprint('running', flush=True)\ntime.sleep(60)\nprint('never')"


@pytest.fixture
def settings() -> Settings:
    settings = on_test_cluster(load_settings(ROOT / "configs" / "kubernetes.toml"))
    return settings.model_copy(update={"engine": settings.engine.model_copy(update={"pool_size": 0})})


@pytest.fixture
def cluster_restored() -> Iterator[None]:
    """Whatever a test stopped is started again afterwards, even if the test failed."""
    yield
    start_cluster()


def start_cluster() -> None:
    """Start what is not running (scripts/ensure-cluster.sh up starts only what is missing)."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-cluster.sh"), "up"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def stop_component(name: str) -> None:
    """SIGKILL one of the cluster's processes, as a crash would, and wait until it is gone."""
    pid = int((RUNTIME / f"{name}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):  # gone, or a zombie: either way it serves no more
        while Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            time.sleep(0.05)


async def run_until_running(sandbox: Sandbox, fault: object) -> EngineError:
    """Start LONG_JOB; once it prints, call ``fault()`` (in a thread); the run must fail."""
    printed = threading.Event()

    def on_output(stream: int, data: bytes) -> None:
        if stream == STDOUT and b"running" in data:
            printed.set()

    failure: list[EngineError] = []

    async def run() -> None:
        try:
            await sandbox.run(snippet(LONG_JOB, limits={"timeout_s": 90}), on_output=on_output)
        except EngineError as exc:
            failure.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        with anyio.fail_after(30):
            while not printed.is_set():
                await anyio.sleep(0.05)
        assert callable(fault)
        await anyio.to_thread.run_sync(fault)
    assert failure, "the run did not fail"
    return failure[0]


def pods_gone(engine: KubernetesEngine, within_s: float = 90) -> None:
    deadline = time.monotonic() + within_s
    while engine.our_pods():
        assert time.monotonic() < deadline, f"pods left behind: {engine.our_pods()}"
        time.sleep(0.5)


def cluster_containers_gone(within_s: float = 90) -> None:
    """No sandbox container still runs in the cluster's containerd (the kubelet removes the
    stopped ones' records later, at its garbage collection)."""
    ctr = ["ctr", "-a", str(RUNTIME / "containerd.sock"), "-n", "k8s.io"]
    deadline = time.monotonic() + within_s
    while True:
        listed = subprocess.run([*ctr, "containers", "ls"], capture_output=True, text=True, check=True).stdout
        ours = {line.split()[0] for line in listed.splitlines()[1:] if "agent-sandbox:" in line}
        tasks = subprocess.run([*ctr, "tasks", "ls"], capture_output=True, text=True, check=True).stdout
        running = [line for line in tasks.splitlines()[1:] if line.split()[0] in ours and "RUNNING" in line]
        if not running:
            return
        assert time.monotonic() < deadline, f"sandbox containers still running: {running}"
        time.sleep(0.5)


async def test_the_api_server_restarted_mid_run(
    settings: Settings, kubernetes_engine: KubernetesEngine, cluster_restored: None
) -> None:
    def restart_api_server() -> None:
        stop_component("kube-apiserver")
        time.sleep(1)
        start_cluster()

    error = await run_until_running(Sandbox(settings, kubernetes_engine), restart_api_server)
    message = str(error)
    assert "API server" in message, message
    assert "run it again" in message, message
    pods_gone(kubernetes_engine)
    cluster_containers_gone()


async def test_an_evicted_pod_is_an_infrastructure_failure(
    settings: Settings, kubernetes_engine: KubernetesEngine
) -> None:
    def evict() -> None:
        (name,) = kubernetes_engine.our_pods()
        eviction = {"apiVersion": "policy/v1beta1", "kind": "Eviction", "metadata": {"name": name}}
        kubernetes_engine.api.create_namespaced_pod_eviction(name, TEST_NAMESPACE, eviction)  # type: ignore[arg-type]

    error = await run_until_running(Sandbox(settings, kubernetes_engine), evict)
    message = str(error)
    assert "an infrastructure failure, not the program's" in message, message
    assert "evicted" in message or "deleted by someone else" in message, message
    pods_gone(kubernetes_engine)
    cluster_containers_gone()


async def test_a_lost_node_is_an_infrastructure_failure(
    settings: Settings, kubernetes_engine: KubernetesEngine, cluster_restored: None
) -> None:
    """The kubelet dies under the run: the stream it carried ends, the pod still says Running.
    The run fails with a note naming the likely cause; the pod object is deleted at once, and the
    container, which no kubelet watches meanwhile, is removed when the kubelet is back."""
    error = await run_until_running(Sandbox(settings, kubernetes_engine), lambda: stop_component("kubelet"))
    message = str(error)
    assert "likely the node or its kubelet" in message, message
    assert "infrastructure failure" in message
    pods_gone(kubernetes_engine)
    start_cluster()
    cluster_containers_gone()
