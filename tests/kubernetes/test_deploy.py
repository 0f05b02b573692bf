"""deploy/kubernetes on a real cluster: the base's hardening as kustomize renders it, and the
test-cluster overlay's two server replicas, built and loaded like an operator would, serving MCP
clients with sandbox pods they own, each session and workspace on the replica that made it.

Needs the test cluster (`scripts/ensure-cluster.sh run -- pytest ...` sets SANDBOX_TESTS_KUBECONFIG);
skipped without it, failed if SANDBOX_TESTS_REQUIRE_RUNTIMES names kubernetes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import pytest
import yaml  # type: ignore[import-untyped]
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from agent_sandbox.engine.kubernetes import ROLE_LABEL
from agent_sandbox.server.progress import STAGE_MESSAGES
from tests.helpers import ROOT, cluster_kubeconfig

pytestmark = pytest.mark.anyio

DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAY = DEPLOY / "overlays" / "test-cluster"
IMAGE = "agent-sandbox-server:test"  # the tag tests/integration/test_server_image.py builds too
SANDBOX_IMAGE = "agent-sandbox:minimal"  # engine.image_repository:engine.profile, the defaults
# The deployment under test gets a namespace and names of its own (ClusterRoles are cluster-wide),
# so it never touches another deployment of the overlay, nor the other tests' namespace.
NAMESPACE = "agent-sandbox-deploy-test"
SUFFIX = "-deploy-test"
DEPLOYMENT = f"agent-sandbox-server{SUFFIX}"
SERVERS = "app.kubernetes.io/name=agent-sandbox,app.kubernetes.io/component=server"
OURS = "app.kubernetes.io/name=agent-sandbox"  # server and sandbox pods alike
READY_TIMEOUT_S = 120
# Usually about 10 s; the test cluster's kubelet, busy with other tests' pods, has taken 70 s to
# report deleted pods gone.
GONE_TIMEOUT_S = 90
PORT = 8000
PROJECT = [
    {"path": "main.py", "content": "import sys\nfrom util import shout\nprint(shout(sys.argv[1]))"},
    {"path": "util.py", "content": "def shout(word):\n    return word.upper() + '!'\n"},
]


@dataclass(frozen=True)
class Replica:
    """A server pod and the loopback address it listens on (the overlay's wrapper picks it)."""

    pod: str
    uid: str
    address: str

    @property
    def url(self) -> str:
        return f"http://{self.address}:{PORT}"


@dataclass(frozen=True)
class Deployment:
    token: str
    replicas: tuple[Replica, Replica]


def kubectl(kubeconfig: str, *args: str, timeout: float = 60) -> str:
    done = kubectl_run(kubeconfig, *args, timeout=timeout)
    assert done.returncode == 0, f"kubectl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def kubectl_run(kubeconfig: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "KUBECONFIG": kubeconfig},
    )


def render(kubeconfig: str, folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """What `kubectl apply -k folder` would apply, by kind and name."""
    documents = yaml.safe_load_all(kubectl(kubeconfig, "kustomize", str(folder)))
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}


def pods(kubeconfig: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        kubectl(kubeconfig, "get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "json")
    )["items"]
    return items


def build_and_load(kubeconfig: str) -> None:
    """The server image, built by the script, and the sandbox image its runs use, loaded into the
    cluster's containerd; seconds when nothing changed."""
    load = ["ensure-cluster.sh", "load", IMAGE, SANDBOX_IMAGE]
    for command in (["build-server-image.sh", IMAGE], load):
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=900,
            env={**os.environ, "KUBECONFIG": kubeconfig},
        )
        assert done.returncode == 0, f"{' '.join(command)} failed: {done.stderr[-4000:]}"


def what_went_wrong(kubeconfig: str) -> str:
    describe = kubectl_run(kubeconfig, "describe", "pods", "-n", NAMESPACE, "-l", SERVERS).stdout
    logs = kubectl_run(
        kubeconfig, "logs", "-n", NAMESPACE, "-l", SERVERS, "--prefix", "--tail=40", "--all-containers"
    )
    return f"{describe[-6000:]}\n--- logs ---\n{logs.stdout[-6000:]}{logs.stderr[-1000:]}"


def listen_address(kubeconfig: str, pod: dict[str, Any]) -> str:
    """Where the overlay's wrapper made this replica listen."""
    where = ["exec", "-n", NAMESPACE, pod["metadata"]["name"], "--", "cat", "/tmp/listen-address"]
    return kubectl(kubeconfig, *where).strip()


@pytest.fixture(scope="module")
def kubeconfig() -> str:
    return cluster_kubeconfig()


@pytest.fixture(scope="module")
def deployed(kubeconfig: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The test-cluster overlay, applied with the image under test in a namespace of its own; once
    both replicas are Ready. Afterwards it is deleted, and no pod of ours may remain."""
    build_and_load(kubeconfig)
    here = tmp_path_factory.mktemp("kustomization")
    (here / "kustomization.yaml").write_text(
        json.dumps(  # JSON is YAML; kustomize takes only a relative path to the overlay
            {
                "resources": [os.path.relpath(OVERLAY, here)],
                "namespace": NAMESPACE,
                "nameSuffix": SUFFIX,
                "images": [{"name": IMAGE.split(":")[0], "newTag": IMAGE.split(":")[1]}],
            }
        )
    )
    secret = next(doc for (kind, _), doc in render(kubeconfig, here).items() if kind == "Secret")
    token = base64.b64decode(secret["data"]["token"]).decode()
    # What an interrupted run left, if anything: a fresh start, and no apply into a dying namespace.
    left_over = ("delete", "namespace", NAMESPACE, "--ignore-not-found", f"--timeout={GONE_TIMEOUT_S}s")
    kubectl(kubeconfig, *left_over, timeout=GONE_TIMEOUT_S + 10)
    kubectl(kubeconfig, "apply", "-k", str(here))
    try:
        rollout = kubectl_run(
            kubeconfig,
            *("rollout", "status", f"deployment/{DEPLOYMENT}", "-n", NAMESPACE),
            f"--timeout={READY_TIMEOUT_S}s",
            timeout=READY_TIMEOUT_S + 10,
        )
        assert rollout.returncode == 0, (
            f"the server replicas were not Ready within {READY_TIMEOUT_S} s: {rollout.stderr}\n"
            + what_went_wrong(kubeconfig)
        )
        ready = [
            pod
            for pod in pods(kubeconfig, SERVERS)
            if "deletionTimestamp" not in pod["metadata"]
            and all(status["ready"] for status in pod["status"].get("containerStatuses", []))
        ]
        assert len(ready) == 2, what_went_wrong(kubeconfig)
        first, second = (
            Replica(pod["metadata"]["name"], pod["metadata"]["uid"], listen_address(kubeconfig, pod))
            for pod in ready
        )
        yield Deployment(token, (first, second))
    finally:
        # The servers first, while their Role still lets them delete their own sandbox pods as they
        # stop; `kubectl delete -k` alone revokes it at the same moment, and their pods then wait
        # for the namespace's deletion (twice as long here).
        kubectl(kubeconfig, "delete", "deployment", DEPLOYMENT, "-n", NAMESPACE, "--wait=false")
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while (left := pods(kubeconfig, OURS)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"pods left in {NAMESPACE}: {[pod['metadata']['name'] for pod in left]}"
        remaining = max(1, round(deadline - time.monotonic()))
        rest = ("delete", "-k", str(here), "--ignore-not-found", f"--timeout={remaining}s")
        kubectl(kubeconfig, *rest, timeout=remaining + 10)


@asynccontextmanager
async def connect(
    replica: Replica,
    token: str,
    mode: str = "auto",
    on_response: Callable[[httpx2.Response], Awaitable[None]] | None = None,
) -> AsyncIterator[Client]:
    """An MCP client of ``replica`` over Streamable HTTP, carrying the bearer token."""
    http = create_mcp_http_client(headers={"authorization": f"Bearer {token}"})
    if on_response is not None:
        http.event_hooks = {"response": [on_response]}
    async with (
        http,
        Client(streamable_http_client(f"{replica.url}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


async def warm(replica: Replica, token: str) -> None:
    """Until the replica's warm pool is full (its /healthz says so), so its next run starts at once."""
    deadline = anyio.current_time() + 60
    async with httpx2.AsyncClient(timeout=10, headers={"authorization": f"Bearer {token}"}) as http:
        while True:
            health = await http.get(f"{replica.url}/healthz")
            if health.status_code == 200 and (pool := health.json()["pool"])["ready"] == pool["size"]:
                return
            assert anyio.current_time() < deadline, f"{replica.pod} never got a full warm pool: {health.text}"
            await anyio.sleep(0.2)


def text_of(result: Any) -> str:
    text: str = result.content[0].text
    return text


def test_the_base_renders_with_its_hardening(kubeconfig: str) -> None:
    base = render(kubeconfig, DEPLOY)
    assert set(base) == {
        ("Namespace", "agent-sandbox"),
        ("ServiceAccount", "agent-sandbox-server"),
        ("Role", "agent-sandbox-server"),
        ("RoleBinding", "agent-sandbox-server"),
        ("ClusterRole", "agent-sandbox-server-health"),
        ("ClusterRoleBinding", "agent-sandbox-server-health"),
        ("Deployment", "agent-sandbox-server"),
        ("Service", "agent-sandbox"),
        ("NetworkPolicy", "agent-sandbox-sandboxes-deny-all"),
        ("NetworkPolicy", "agent-sandbox-server"),
    }  # no Secret (no token ships) and no RuntimeClass (optional, a file of its own)
    labels = base["Namespace", "agent-sandbox"]["metadata"]["labels"]
    assert {labels[f"pod-security.kubernetes.io/{mode}"] for mode in ("enforce", "audit", "warn")} == {
        "restricted"
    }
    assert base["Role", "agent-sandbox-server"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "list", "delete"]},
        {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods/attach"], "verbs": ["create", "get"]},
    ]
    assert base["ClusterRole", "agent-sandbox-server-health"]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
        {"apiGroups": ["node.k8s.io"], "resources": ["runtimeclasses"], "verbs": ["list"]},
    ]
    account = {"kind": "ServiceAccount", "name": "agent-sandbox-server", "namespace": "agent-sandbox"}
    for binding in (
        ("RoleBinding", "agent-sandbox-server"),
        ("ClusterRoleBinding", "agent-sandbox-server-health"),
    ):
        assert base[binding]["subjects"] == [account]
    assert base["NetworkPolicy", "agent-sandbox-sandboxes-deny-all"]["spec"] == {
        "podSelector": {"matchLabels": {ROLE_LABEL: "sandbox"}},
        "policyTypes": ["Ingress", "Egress"],  # and no rule of either kind: nothing in, nothing out
    }
    assert base["NetworkPolicy", "agent-sandbox-server"]["spec"]["ingress"] == [
        {"ports": [{"port": PORT, "protocol": "TCP"}]}
    ]

    deployment = base["Deployment", "agent-sandbox-server"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "hostNetwork" not in pod
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == "agent-sandbox-server"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
    assert set(mounts) == {
        "/var/lib/agent-sandbox/workspaces",
        "/var/lib/agent-sandbox/runs",
        "/var/cache/agent-sandbox",
        "/tmp",
    }
    assert all("emptyDir" in volume for volume in mounts.values())
    assert container["image"] == "agent-sandbox-server:latest"
    assert container["args"] == [
        "serve",
        "--transport",
        "streamable-http",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    env = {variable["name"]: variable for variable in container["env"]}
    assert env["AGENT_SANDBOX_ENGINE__BACKEND"]["value"] == "kubernetes"
    assert env["AGENT_SANDBOX_LIMITS__PIDS"]["value"] == "128"  # as configs/kubernetes.toml states it
    assert env["AGENT_SANDBOX_SERVER__AUTH_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "agent-sandbox-token", "key": "token"}
    }
    from_pod = {
        key: env[f"AGENT_SANDBOX_KUBERNETES__{key}"]["valueFrom"]["fieldRef"]["fieldPath"]
        for key in ("NAMESPACE", "SERVER_POD_NAME", "SERVER_POD_UID")
    }
    assert from_pod == {
        "NAMESPACE": "metadata.namespace",
        "SERVER_POD_NAME": "metadata.name",
        "SERVER_POD_UID": "metadata.uid",
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # Liveness only asks whether it answers: a cluster away must not restart it (sessions end).
    assert container["livenessProbe"]["tcpSocket"] == {"port": "http"}

    runtime_class = yaml.safe_load((DEPLOY / "runtimeclass-gvisor.yaml").read_text())
    assert (runtime_class["kind"], runtime_class["metadata"]["name"], runtime_class["handler"]) == (
        "RuntimeClass",
        "gvisor",
        "runsc",
    )


def test_the_servers_account_may_do_what_the_engine_does_and_nothing_more(
    kubeconfig: str, deployed: Deployment
) -> None:
    account = f"system:serviceaccount:{NAMESPACE}:agent-sandbox-server{SUFFIX}"

    def may(verb: str, resource: str, subresource: str = "", namespace: str = NAMESPACE) -> bool:
        asked = [verb, resource, "-n", namespace, "--as", account]
        done = kubectl_run(kubeconfig, "auth", "can-i", *asked, f"--subresource={subresource}")
        return done.stdout.strip() == "yes"

    engine_uses = [
        ("create", "pods", ""),
        ("list", "pods", ""),
        ("delete", "pods", ""),
        ("get", "pods", "status"),
        ("create", "pods", "attach"),
        ("get", "pods", "attach"),
        ("list", "nodes", ""),
        ("list", "runtimeclasses.node.k8s.io", ""),
    ]
    assert [use for use in engine_uses if not may(*use)] == []
    beyond = [
        ("get", "pods", ""),  # the engine reads a pod's status only (pods/status)
        ("create", "pods", "exec"),
        ("get", "pods", "log"),
        ("update", "pods", ""),
        ("patch", "pods", ""),
        ("watch", "pods", ""),
        ("get", "secrets", ""),
        ("list", "secrets", ""),
        ("create", "deployments.apps", ""),
        ("create", "rolebindings.rbac.authorization.k8s.io", ""),
        ("get", "nodes", ""),
        ("delete", "runtimeclasses.node.k8s.io", ""),
    ]
    assert [use for use in beyond if may(*use)] == []
    assert not may("create", "pods", namespace="default")


async def test_run_python_and_run_project_through_the_server_in_the_cluster(
    kubeconfig: str, deployed: Deployment
) -> None:
    replica = deployed.replicas[0]
    async with httpx2.AsyncClient(timeout=10) as http:
        anonymous = await http.get(f"{replica.url}/healthz")
        detailed = await http.get(
            f"{replica.url}/healthz", headers={"authorization": f"Bearer {deployed.token}"}
        )
        metrics = await http.get(f"{replica.url}/metrics")
    assert (anonymous.status_code, anonymous.json()) == (200, {"status": "ok"})
    version = json.loads(kubectl(kubeconfig, "version", "-o", "json"))["serverVersion"]["gitVersion"]
    assert detailed.json()["engine"]["version"] == version  # in-cluster credentials reached the API server
    assert metrics.status_code == 401

    async with connect(replica, deployed.token) as client:
        snippet = await client.call_tool("run_python", {"code": "print('hello from a pod')"})
        project = await client.call_tool("run_project", {"files": PROJECT, "args": ["in the cluster"]})
    assert snippet.is_error is False, text_of(snippet)
    assert snippet.structured_content is not None
    assert (snippet.structured_content["stdout"], snippet.structured_content["exit_code"]) == (
        "hello from a pod\n",
        0,
    )
    assert project.is_error is False, text_of(project)
    assert project.structured_content is not None
    assert (project.structured_content["stdout"], project.structured_content["exit_code"]) == (
        "IN THE CLUSTER!\n",
        0,
    )


async def test_both_replicas_run_at_once_each_in_sandbox_pods_it_owns(
    kubeconfig: str, deployed: Deployment
) -> None:
    """While a run of each replica is in progress, both sandbox pods are Running, each owned by
    the server pod that made it (deleting that pod deletes them); neither shares the servers' host
    network: each program sees only its own loopback."""
    # A pod's hostname is its name.
    program = "import socket, time\nprint(socket.gethostname(), *socket.if_nameindex())\ntime.sleep(3)"
    running = {replica.pod: anyio.Event() for replica in deployed.replicas}
    seen_by: dict[str, list[str]] = {}

    async def run_on(replica: Replica) -> None:
        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if message == STAGE_MESSAGES["running"]:
                running[replica.pod].set()

        async with connect(replica, deployed.token, mode="legacy") as client:  # legacy: progress is reported
            result = await client.call_tool("run_python", {"code": program}, progress_callback=on_progress)
        assert result.structured_content is not None, text_of(result)
        seen_by[replica.pod] = result.structured_content["stdout"].split(" ", 1)

    for replica in deployed.replicas:  # warm starts, so the two programs overlap however busy the node
        await warm(replica, deployed.token)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for replica in deployed.replicas:
                group.start_soon(run_on, replica)
            for event in running.values():
                await event.wait()
            during = await anyio.to_thread.run_sync(pods, kubeconfig, f"{ROLE_LABEL}=sandbox")
    sandboxes = {pod["metadata"]["name"]: pod for pod in during}
    for replica in deployed.replicas:
        name, interfaces = seen_by[replica.pod]
        assert name in sandboxes, f"{name} is not among the sandbox pods {sorted(sandboxes)}"
        pod = sandboxes[name]
        assert pod["status"]["phase"] == "Running"
        assert pod["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Pod", "name": replica.pod, "uid": replica.uid}
        ]
        assert pod["spec"].get("hostNetwork", False) is False
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert interfaces == "(1, 'lo')\n"


async def test_a_session_and_its_workspaces_stay_on_the_replica_that_made_them(deployed: Deployment) -> None:
    """An MCP session (Mcp-Session-Id, the 2025 protocol's handshake) and the workspaces it owns
    live in one replica's memory and on its disk: the other replica answers 404 to the session
    and knows no such workspace, so a load balancer must keep each session on one replica."""
    first, second = deployed.replicas
    sessions: set[str] = set()

    async def record(response: httpx2.Response) -> None:
        if session := response.headers.get("mcp-session-id"):
            sessions.add(session)

    async with connect(first, deployed.token, mode="legacy", on_response=record) as client:
        created = await client.call_tool("workspace_create", {})
        assert created.structured_content is not None, text_of(created)
        workspace = created.structured_content["workspace"]
        project = await client.call_tool(
            "run_project", {"files": PROJECT, "args": ["first"], "workspace": workspace}
        )
        again = await client.call_tool(
            "run_python", {"code": "import util\nprint(util.shout('again'))", "workspace": workspace}
        )
        (session,) = sessions
        ping = {"jsonrpc": "2.0", "id": 99, "method": "ping"}
        headers = {
            "authorization": f"Bearer {deployed.token}",
            "accept": "application/json, text/event-stream",
            "mcp-session-id": session,
            "mcp-protocol-version": client.protocol_version,
        }
        async with httpx2.AsyncClient(timeout=10) as http:
            on_first = await http.post(f"{first.url}/mcp", json=ping, headers=headers)
            on_second = await http.post(f"{second.url}/mcp", json=ping, headers=headers)
    assert project.structured_content is not None, text_of(project)
    assert project.structured_content["stdout"] == "FIRST!\n"
    assert again.structured_content is not None, text_of(again)
    assert again.structured_content["stdout"] == "AGAIN!\n"  # util.py was kept in the workspace
    assert on_first.status_code == 200
    assert on_second.status_code == 404
    assert "Session not found" in on_second.text

    async with connect(second, deployed.token, mode="legacy") as elsewhere:
        unknown = await elsewhere.call_tool("workspace_files", {"workspace": workspace})
    assert unknown.is_error is True
    assert f"there is no workspace '{workspace}'" in text_of(unknown)


async def test_without_sessions_a_workspace_stays_on_the_replica_that_made_it(deployed: Deployment) -> None:
    """The 2026 protocol (the SDK's default) has no sessions: a workspace belongs to the caller's
    address and lives on the replica that made it, where a new connection from that address finds
    it; the other replica does not know it."""
    first, second = deployed.replicas
    async with connect(first, deployed.token) as client:
        created = await client.call_tool("workspace_create", {})
    assert created.structured_content is not None, text_of(created)
    workspace = created.structured_content["workspace"]
    async with connect(first, deployed.token) as again, connect(second, deployed.token) as elsewhere:
        found = await again.call_tool("workspace_files", {"workspace": workspace})
        unknown = await elsewhere.call_tool("workspace_files", {"workspace": workspace})
    assert found.is_error is False, text_of(found)
    assert unknown.is_error is True
    assert f"there is no workspace '{workspace}'" in text_of(unknown)
