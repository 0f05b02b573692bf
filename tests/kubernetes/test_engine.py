"""The Kubernetes backend against the real test cluster: the pod as the API server stored it, and
every refusal and problem with its fix. (The posture probe, the hostile-program matrix, the pool
and both tools over stdio and HTTP run on this backend too: see PROFILES and ``backend``.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from agent_sandbox.config import Settings, load_settings
from agent_sandbox.engine.base import STDOUT
from agent_sandbox.engine.kubernetes import OWNER_ANNOTATION, ROLE_LABEL, KubernetesEngine
from agent_sandbox.errors import EngineError, ImageMissing, Refused
from agent_sandbox.sandbox import Sandbox
from tests.helpers import KUBERNETES, ROOT, TEST_NAMESPACE, Backend, on_test_cluster, snippet
from tests.mcp.conftest import serving

pytestmark = pytest.mark.anyio


def cluster_settings(**kubernetes: Any) -> Settings:
    settings = on_test_cluster(load_settings(ROOT / "configs" / "kubernetes.toml"))
    return settings.model_copy(
        update={
            "engine": settings.engine.model_copy(update={"pool_size": 0}),
            "kubernetes": settings.kubernetes.model_copy(update=kubernetes),
        }
    )


def engine_for(settings: Settings) -> KubernetesEngine:
    return KubernetesEngine(settings.engine, settings.kubernetes, settings.limits.pids)


async def test_the_pod_is_hardened_as_the_api_server_stored_it(kubernetes_engine: KubernetesEngine) -> None:
    seen: list[dict[str, Any]] = []
    printed = threading.Event()

    def on_output(stream: int, data: bytes) -> None:
        if stream == STDOUT and not printed.is_set():  # once, however the output is split
            (name,) = kubernetes_engine.our_pods()
            seen.append(
                kubernetes_engine.api.api_client.sanitize_for_serialization(
                    kubernetes_engine.api.read_namespaced_pod(name, TEST_NAMESPACE)
                )
            )
            printed.set()

    settings = cluster_settings()
    result = await Sandbox(settings, kubernetes_engine).run(snippet("print('hi')"), on_output=on_output)
    assert result.stdout == "hi\n"
    (pod,) = seen
    spec, (container,) = pod["spec"], pod["spec"]["containers"]
    assert pod["metadata"]["labels"][ROLE_LABEL] == "sandbox"
    assert pod["metadata"]["annotations"][OWNER_ANNOTATION] == kubernetes_engine.owner
    assert "ownerReferences" not in pod["metadata"]  # outside a cluster, no server pod owns it
    assert (spec["automountServiceAccountToken"], spec["enableServiceLinks"]) == (False, False)
    assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"))
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == settings.kubernetes.max_pod_lifetime_s
    assert spec["securityContext"] == {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["privileged"] is False
    assert hardening["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    assert (container["stdin"], container["stdinOnce"], container.get("tty", False)) == (True, True, False)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert set(volumes) == {"work", "tmp", "shm"}  # nothing from the host
    assert volumes["work"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "512Mi"}
    assert volumes["tmp"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "128Mi"}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Mi"}
    assert kubernetes_engine.our_pods() == []  # deleted before the result came back


async def test_a_run_asking_for_another_process_limit_is_refused(kubernetes_engine: KubernetesEngine) -> None:
    with pytest.raises(Refused, match=r"limits.pids is 32.*podPidsLimit.*limits.pids = 128.*leave pids out"):
        await Sandbox(cluster_settings(), kubernetes_engine).run(snippet("print(1)", limits={"pids": 32}))
    assert kubernetes_engine.our_pods() == []


async def test_per_run_requirements_are_refused_with_what_to_do(kubernetes_engine: KubernetesEngine) -> None:
    with pytest.raises(Refused, match="per-run requirements are turned off on this server"):
        await Sandbox(cluster_settings(), kubernetes_engine).run(snippet("print(1)", requirements=["six"]))


async def test_a_missing_image_is_reported_before_and_during_a_run() -> None:
    settings = cluster_settings(images={"minimal": "agent-sandbox:not-loaded"})
    engine = engine_for(settings)
    health = engine.health([settings.engine.image_of("minimal")], "")
    (problem,) = health.problems
    assert isinstance(problem, ImageMissing)
    assert "agent-sandbox:not-loaded is on no ready node" in str(problem)
    with pytest.raises(ImageMissing, match=r"cannot get its image \(ErrImageNeverPull"):
        await Sandbox(settings, engine).run(snippet("print(1)"))
    assert engine.our_pods() == []


def test_an_unknown_runtime_class_is_a_problem_with_its_fix() -> None:
    settings = cluster_settings(runtime_class="gvisor")
    health = engine_for(settings).health([], "")
    assert [str(problem) for problem in health.problems] == [
        "kubernetes.runtime_class is 'gvisor', but the cluster offers no RuntimeClass: create a "
        "RuntimeClass whose handler the nodes' container runtime offers "
        "(deploy/kubernetes/runtimeclass-gvisor.yaml is an example), or set it to one of those"
    ]


def test_docker_settings_on_kubernetes_are_problems_with_their_fix() -> None:
    settings = cluster_settings()
    health = engine_for(settings).health([], "runsc")
    assert "set kubernetes.runtime_class and leave engine.runtime empty" in str(health.problems[0])


def test_an_api_server_that_is_not_there(tmp_path: Path) -> None:
    config = Path(cluster_settings().kubernetes.kubeconfig).read_text()
    broken = tmp_path / "kubeconfig"
    broken.write_text(config.replace("https://127.0.0.1:6443", "https://127.0.0.1:9"))
    health = engine_for(cluster_settings(kubeconfig=str(broken))).health([], "")
    assert health.version is None
    assert "no Kubernetes API server answers at https://127.0.0.1:9" in str(health.problems[0])


def test_no_credentials_at_all(tmp_path: Path) -> None:
    health = engine_for(cluster_settings(kubeconfig=str(tmp_path / "missing"))).health([], "")
    assert "no Kubernetes credentials" in str(health.problems[0])
    assert "set kubernetes.kubeconfig or KUBECONFIG" in str(health.problems[0])


async def test_an_unschedulable_pod_fails_the_run_with_the_schedulers_words() -> None:
    settings = cluster_settings(node_selector={"agent-sandbox.io/no-such-node": "true"}, start_timeout_s=3.0)
    engine = engine_for(settings)
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"not running after 3 s \(not scheduled: .*node"):
        await Sandbox(settings, engine).run(snippet("print(1)"))
    assert time.monotonic() - started < 15
    assert engine.our_pods() == []


async def test_healthz_reports_the_cluster(kubernetes_engine: KubernetesEngine) -> None:
    cluster = Backend(
        KUBERNETES, kubernetes_engine, on_test_cluster(load_settings(ROOT / "configs" / "kubernetes.toml"))
    )
    with serving("streamable-http", cluster.server_env()) as (url, _, _):
        async with httpx2.AsyncClient() as client:
            with anyio.fail_after(30):
                while (response := await client.get(f"{url}/healthz")).json()["pool"]["ready"] < 2:
                    await anyio.sleep(0.5)
    body = response.json()
    assert body["status"] == "ok"
    assert body["engine"]["backend"] == "kubernetes"
    assert body["engine"]["version"] == "v1.20.2"
    assert (
        body["engine"]["description"]
        == f"Kubernetes v1.20.2 at https://127.0.0.1:6443, namespace {TEST_NAMESPACE}"
    )
    assert body["engine"]["runtime"]["offered"] == []
    assert body["engine"]["runtime"]["details"].startswith(
        "1/1 nodes ready; process limit: the kubelet's podPidsLimit"
    )
    assert body["images"] == {"minimal": {"image": "agent-sandbox:minimal", "present": True}}
