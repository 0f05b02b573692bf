"""The Kubernetes backend: one fresh hardened pod per run, deleted after. The only code that talks
to a cluster, and the second implementation of ``engine/base.py``'s ``Engine``.

A pod is created with the launcher waiting on its stdin (``stdinOnce``), hardened from the pod
spec alone (non-root uid 1000, read-only root, no capabilities, no privilege escalation, the
runtime's default seccomp filter, no service account token or service links, memory-backed
``emptyDir`` volumes for /work and /tmp, CPU and memory limits, ``activeDeadlineSeconds`` as the
backstop) and labelled with the server that owns it. A run attaches to the pod (a websocket
through the API server and the kubelet, on an API client of its own: the official client patches
the API client it is given while a stream connects), writes the job session's payload, and feeds
the session what comes back on the stdout and stderr channels until the launcher's end line is in
on both. A kill
is a deletion with no grace period. Where the launcher could not report, the pod's status says
how the container ended (exit code, ``OOMKilled``), and a pod that the cluster evicted, deleted
or lost with its node is an infrastructure failure, said as such. The pod is deleted on every path.

The launcher is the container's PID 1 here (no init; each container has its own PID namespace),
so the program cannot stop it: the session never asks to resume it, and a launcher late at its
deadline is killed.
Kubernetes has no per-container ulimits or pids limit: the launcher sets the job's rlimits itself,
and the process limit is the kubelet's ``podPidsLimit``, which ``limits.pids`` must state; a run
that asks for another is refused (docs/kubernetes.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import secrets
import select
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import urllib3.exceptions
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream as k8s_stream
from kubernetes.stream.ws_client import STDERR_CHANNEL, STDIN_CHANNEL, STDOUT_CHANNEL
from websocket import ABNF, WebSocket, WebSocketException

from agent_sandbox.config import PROFILE_NAMES, EngineSettings, KubernetesSettings
from agent_sandbox.engine.base import (
    ENGINE_CALL_THREADS,
    STDERR,
    STDOUT,
    EngineHealth,
    ImageState,
    OutputCallback,
    ProgressCallback,
    RuntimeState,
    no_progress,
)
from agent_sandbox.engine.launch import BASE_ENV, SANDBOX_UID, WORKDIR, launcher_command, orphaned, owner_id
from agent_sandbox.engine.pool import WarmPool
from agent_sandbox.engine.session import TICK_S, Action, JobSession, drive
from agent_sandbox.engine.spec import ContainerShape, Outcome, RunSpec
from agent_sandbox.errors import EngineError, EngineUnavailable, ImageMissing, Refused

ROLE_LABEL = "agent-sandbox.io/role"  # "sandbox" on every pod of ours (the NetworkPolicy selects it)
OWNER_LABEL = "agent-sandbox.io/owner"  # a digest of the owning process, to list its pods
OWNER_ANNOTATION = "agent-sandbox.io/owner"  # the owner itself (labels cannot hold it)
CONTAINER = "sandbox"
RUNTIME_FIX = (
    "create a RuntimeClass whose handler the nodes' container runtime offers "
    "(deploy/kubernetes/runtimeclass-gvisor.yaml is an example)"
)
_READ_BUDGET = 1 << 20  # bytes read between two looks at the session's deadlines
_API_TIMEOUT_S = 30.0  # for any one request to the API server, or write to a stream
_WRITE_CHUNK = 1 << 16
_FINAL_STATE_WAIT_S = 10.0  # for the kubelet to report a container that has ended
_REMOVE_RETRY_S = 20.0  # keep trying to delete a pod while the API server is away (a restart)
# Why a waiting container will never start: its image is not there and may not be pulled, or
# its name is wrong. A failed pull (_IMAGE_PULLS) the kubelet retries until start_timeout_s.
_IMAGE_NEVER = {"ErrImageNeverPull", "InvalidImageName"}
_IMAGE_PULLS = ("ErrImagePull", "ImagePullBackOff")
# API answers worth another try: too many requests (API priority and fairness), a server error.
_RETRY_STATUSES = {429, 500, 502, 503, 504}
# What the client raises when the API server is not there or the stream breaks.
_CONNECTION_ERRORS = (
    urllib3.exceptions.HTTPError,
    OSError,
    WebSocketException,
    ValueError,  # an answer that is not JSON (a proxy's error page)
    k8s_config.ConfigException,  # credentials that could not be refreshed mid-call
)

log = logging.getLogger(__name__)


class AttachStream:
    """The pod's attach websocket (the v4 channel protocol: a channel byte, then the bytes), read a
    frame at a time. The client's own reader keeps reading for as long as frames wait, so an output
    flood would hold it, and the session could never stop the program."""

    def __init__(self, websocket: WebSocket):
        self.websocket = websocket
        self.open = True

    def send(self, data: bytes) -> None:
        """Write ``data`` to the launcher's stdin."""
        self.websocket.send(bytes([STDIN_CHANNEL]) + data, opcode=ABNF.OPCODE_BINARY)

    def receive(self, wait_s: float, budget: int) -> list[tuple[int, bytes]]:
        """The stdout and stderr frames that come within ``wait_s`` (the first) or are already
        here (the rest), up to about ``budget`` bytes; ``open`` turns False at the close frame."""
        chunks: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + wait_s
        while self.open and budget > 0 and self._readable(0.0 if chunks else deadline - time.monotonic()):
            opcode, frame = self.websocket.recv_data_frame(True)
            if opcode == ABNF.OPCODE_CLOSE:
                self.open = False
            elif opcode in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT) and len(frame.data) > 1:
                channel, data = frame.data[0], bytes(frame.data[1:])
                if channel in (STDOUT_CHANNEL, STDERR_CHANNEL):
                    chunks.append((STDOUT if channel == STDOUT_CHANNEL else STDERR, data))
                    budget -= len(data)
        return chunks

    def _readable(self, timeout_s: float) -> bool:
        sock = self.websocket.sock
        if sock is None:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted already: poll cannot see it
            return True
        return bool(select.select([sock], [], [], max(0.0, timeout_s))[0])

    def close(self) -> None:
        with contextlib.suppress(*_CONNECTION_ERRORS):
            self.websocket.close()


def owner_digest(owner: str) -> str:
    """A label value naming ``owner`` (labels allow 63 characters of a small alphabet)."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


def pod_manifest(
    shape: ContainerShape, owner: str, settings: KubernetesSettings, image: str, name: str
) -> dict[str, Any]:
    """The hardened pod for a sandbox of ``shape`` (see the module docstring).

    The launcher starts with no job: files, command, env and stdin come later over the attach
    stream, so the same pod serves cold starts and the warm pool."""
    if shape.network:
        raise EngineError(
            f"engine.network ({shape.network!r}) names a Docker network; Kubernetes sandbox pods "
            "have none (a NetworkPolicy denies all): leave engine.network empty"
        )
    if shape.packages is not None:
        raise EngineError(
            "per-run requirements need the server's wheel cache mounted into the sandbox, which the "
            "Kubernetes backend does not offer yet: use an image profile that has the packages "
            "(e.g. image='datascience') or engine.backend = 'docker'"
        )
    user = {
        "runAsUser": SANDBOX_UID,
        "runAsGroup": SANDBOX_UID,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    memory = f"{shape.memory_mib}Mi"
    volumes = [("work", WORKDIR, shape.work_mib), ("tmp", "/tmp", shape.tmp_mib)]
    if shape.shm_mib:
        volumes.append(("shm", "/dev/shm", shape.shm_mib))
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {
            "app.kubernetes.io/name": "agent-sandbox",
            "app.kubernetes.io/component": "sandbox",
            ROLE_LABEL: "sandbox",
            OWNER_LABEL: owner_digest(owner),
        },
        "annotations": {OWNER_ANNOTATION: owner},
    }
    if settings.server_pod_name and settings.server_pod_uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": settings.server_pod_name,
                "uid": settings.server_pod_uid,
            }
        ]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,
        "terminationGracePeriodSeconds": 1,  # the launcher ignores SIGTERM: an eviction waits this long
        "activeDeadlineSeconds": settings.max_pod_lifetime_s,
        "securityContext": user,
        "containers": [
            {
                "name": CONTAINER,
                "image": image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": launcher_command(relay_output=True),
                "env": [{"name": key, "value": value} for key, value in BASE_ENV.items()],
                "workingDir": WORKDIR,
                "stdin": True,
                "stdinOnce": True,  # stdin closes when the (one) attach ends
                "tty": False,
                "securityContext": {
                    **user,
                    "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": {
                    "limits": {"cpu": _cpus(shape.cpus), "memory": memory},
                    "requests": {"cpu": _cpus(min(settings.cpu_request, shape.cpus)), "memory": memory},
                },
                "volumeMounts": [{"name": volume, "mountPath": path} for volume, path, _ in volumes],
            }
        ],
        # Memory-backed: the files count against the pod's memory, as Docker's tmpfs do.
        "volumes": [
            {"name": volume, "emptyDir": {"medium": "Memory", "sizeLimit": f"{mib}Mi"}}
            for volume, _, mib in volumes
        ],
    }
    if settings.runtime_class:
        spec["runtimeClassName"] = settings.runtime_class
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        spec["tolerations"] = [
            {key: value for key, value in toleration.model_dump().items() if value}
            for toleration in settings.tolerations
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _cpus(cpus: float) -> str:
    return f"{round(cpus * 1000)}m"


@dataclass
class StartedPod:
    """A running pod whose launcher waits for its one job on stdin."""

    name: str
    shape: ContainerShape
    started_at: float = field(default_factory=time.monotonic)

    def looks_alive(self) -> bool:
        """Asking would cost an API call on the event loop; a warm pod that died is found when
        the run attaches to it, and the run then starts cold."""
        return True


class KubernetesEngine:
    """Runs ``RunSpec``s in fresh pods (see the module docstring)."""

    name = "the Kubernetes cluster"

    def __init__(self, engine: EngineSettings, settings: KubernetesSettings, node_pids_limit: int):
        self.settings = settings
        # What the kubelet's podPidsLimit holds every pod to, as configured (limits.pids): a pod
        # spec cannot set a process limit, so no run may ask for another.
        self.node_pids_limit = node_pids_limit
        self.namespace = settings.namespace
        self.owner = owner_id()
        # The image of each profile's tag: what a RunSpec names, what the pod runs.
        self.images = {
            engine.image_of(profile): settings.images.get(profile, engine.image_of(profile))
            for profile in PROFILE_NAMES
        }
        self._configuration: k8s.Configuration | None = None
        self._api: k8s.CoreV1Api | None = None
        self._watchers = anyio.CapacityLimiter(engine.max_concurrent_runs)
        self._calls = anyio.CapacityLimiter(ENGINE_CALL_THREADS)
        self.pool: WarmPool[StartedPod] | None = None

    @property
    def configuration(self) -> k8s.Configuration:
        """The cluster's address and credentials, loaded on first use."""
        if self._configuration is None:
            configuration = k8s.Configuration()
            try:
                if not self.settings.kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
                    k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                        client_configuration=configuration
                    )
                else:
                    k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                        config_file=self.settings.kubeconfig or None,
                        context=self.settings.context or None,
                        client_configuration=configuration,
                    )
            except (k8s_config.ConfigException, OSError) as exc:
                raise EngineUnavailable(
                    f"no Kubernetes credentials ({exc}); set kubernetes.kubeconfig or KUBECONFIG, "
                    "or run the server in the cluster (deploy/kubernetes)"
                ) from None
            self._configuration = configuration
        return self._configuration

    @property
    def api(self) -> k8s.CoreV1Api:
        """The core API for plain requests (thread-safe; streams get their own client)."""
        if self._api is None:
            self._api = k8s.CoreV1Api(k8s.ApiClient(self.configuration))
        return self._api

    def _read(self, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """An API call's answer as plain JSON: the client's models type every field optional."""
        response = call(*args, _preload_content=False, _request_timeout=_API_TIMEOUT_S, **kwargs)
        answer: dict[str, Any] = json.loads(response.data)
        return answer

    def health(self, images: Sequence[str], runtime: str) -> EngineHealth:
        """The API server's version, the nodes, the runtime classes and ``images`` on the nodes, and
        what keeps runs from starting (each problem with its fix). ``runtime`` is Docker's setting:
        here the runtime class is ``kubernetes.runtime_class``."""
        where = f"namespace {self.namespace}"
        try:
            with _api_errors(self):
                version = str(self._read(k8s.VersionApi(self.api.api_client).get_code)["gitVersion"])
                where = f"{self.configuration.host}, {where}"
                self._read(self.api.list_namespaced_pod, self.namespace, limit=1)  # our rights
        except EngineError as exc:
            return EngineHealth(f"Kubernetes at {where}", None, problems=[exc])
        problems: list[EngineError] = []
        if runtime:
            problems.append(
                EngineError(
                    f"engine.runtime ({runtime!r}) is a Docker setting; on Kubernetes the sandbox "
                    "runtime is a RuntimeClass: set kubernetes.runtime_class and leave engine.runtime empty"
                )
            )
        nodes, node_images, notes = self._nodes()
        states = []
        for tag in images:
            image = self.images.get(tag, tag)
            size = _image_size(image, node_images)
            if size is not None or nodes is None:  # there, or no way to tell: the run will say
                states.append(ImageState(image, True, size))
                continue
            if self.settings.image_pull_policy == "Never":
                missing = ImageMissing(
                    f"the sandbox image {image} is on no ready node and kubernetes.image_pull_policy is "
                    "Never: load it into the nodes' container runtime, or push it to a registry the "
                    "nodes can pull from and set kubernetes.images and image_pull_policy"
                )
                problems.append(missing)
                states.append(ImageState(image, False, problem=str(missing)))
            else:
                states.append(
                    ImageState(image, False, problem="not on a ready node yet: pulled on first use")
                )
        classes = self._runtime_classes(notes)
        configured = self.settings.runtime_class
        if configured and classes is not None and configured not in classes:
            problems.append(
                EngineUnavailable(
                    f"kubernetes.runtime_class is {configured!r}, but the cluster offers "
                    f"{', '.join(classes) or 'no RuntimeClass'}: {RUNTIME_FIX}, or set it to one of those"
                )
            )
        ready = "?" if nodes is None else f"{sum(nodes.values())}/{len(nodes)} nodes ready"
        pids = f"process limit: the kubelet's podPidsLimit, stated as limits.pids = {self.node_pids_limit}"
        state = RuntimeState(
            used=configured or "(the nodes' default)",
            default="(the nodes' default)",
            offered=tuple(classes or ()),
            details="; ".join([ready, pids, *notes]),
            fix=RUNTIME_FIX,
        )
        if nodes is not None and not any(nodes.values()):
            problems.append(EngineUnavailable("no node of the cluster is Ready: sandbox pods cannot start"))
        return EngineHealth(f"Kubernetes {version} at {where}", version, state, states, problems)

    def reap(self, older_than_s: float) -> int:
        """Delete sandbox pods that no live process will delete; returns how many.

        That is: those of a process of this host and PID namespace that has ended; those of an
        earlier server in this server's own pod (one server per pod: a restarted container); and,
        whoever made them, any older than
        ``older_than_s`` and than the cluster's own backstop (``max_pod_lifetime_s`` and a start):
        another replica's pod may have waited for scheduling, and clocks differ. A live server
        elsewhere keeps its pods; in a cluster, the owner reference removes a dead server's."""
        now = time.time()
        backstop_s = max(older_than_s, self.settings.max_pod_lifetime_s + self.settings.start_timeout_s)
        removed = 0
        with _api_errors(self):
            pods = self._read(
                self.api.list_namespaced_pod, self.namespace, label_selector=f"{ROLE_LABEL}=sandbox"
            )
        uid = self.settings.server_pod_uid
        for pod in pods["items"]:
            metadata = pod["metadata"]
            owner = (metadata.get("annotations") or {}).get(OWNER_ANNOTATION, "")
            if owner == self.owner:
                continue
            in_my_pod = bool(uid) and any(ref["uid"] == uid for ref in metadata.get("ownerReferences") or ())
            created = datetime.datetime.fromisoformat(metadata["creationTimestamp"].replace("Z", "+00:00"))
            if orphaned(owner, self.owner) or in_my_pod or now - created.timestamp() > backstop_s:
                removed += self._delete(metadata["name"])
        return removed

    def close(self) -> int:
        """Delete every pod this process still has; how many."""
        return sum(self._delete(name) for name in self.our_pods())

    def our_pods(self) -> list[str]:
        """Names of the pods this process created that still exist."""
        with _api_errors(self):
            pods = self._read(
                self.api.list_namespaced_pod,
                self.namespace,
                label_selector=f"{OWNER_LABEL}={owner_digest(self.owner)}",
            )
        return [pod["metadata"]["name"] for pod in pods["items"]]

    @contextlib.asynccontextmanager
    async def warm(
        self, shape: ContainerShape, size: int, max_idle_s: float, max_size: int = 0
    ) -> AsyncIterator[WarmPool[StartedPod]]:
        """Keep ``size`` (up to ``max_size`` under load) pods of ``shape`` running while the
        block lasts (engine/pool.py)."""
        async with WarmPool(self, shape, size, max_idle_s, max_size) as pool:
            yield pool

    async def run(
        self,
        spec: RunSpec,
        on_progress: ProgressCallback | None = None,
        on_output: OutputCallback | None = None,
    ) -> Outcome:
        """Run ``spec`` in a pod of its own (warm if one is ready, else a new one) and delete the
        pod, whatever happens (cancellation too). ``on_output`` sees the output live."""
        if spec.limits.pids != self.node_pids_limit:
            raise Refused(
                f"limits.pids is {spec.limits.pids}, but on Kubernetes every sandbox pod has the process "
                f"limit of its node's kubelet (podPidsLimit, configured here as limits.pids = "
                f"{self.node_pids_limit}), which a pod cannot change: leave pids out of the request"
            )
        # The runtime class may be gVisor (short writes on its pipes: docs/gvisor.md), and the
        # launcher, PID 1 here, outlives anything the program does: relaying loses nothing.
        spec = dataclasses.replace(spec, relay=True)
        report = on_progress or no_progress
        started = self.pool.take(spec.shape) if self.pool else None
        warm = started is not None
        stream: AttachStream | None = None
        try:
            if started is not None:
                try:
                    stream = await anyio.to_thread.run_sync(self._attach, started.name, limiter=self._calls)
                except EngineError as exc:  # it died while it waited: start cold instead
                    log.warning("warm pod %s cannot take a job (%s); starting one cold", started.name, exc)
                    await self._release(started)
                    started, warm = None, False
            if started is None:
                await report("starting")
                started = await self.start_sandbox(spec.shape)
            if stream is None:
                stream = await anyio.to_thread.run_sync(self._attach, started.name, limiter=self._calls)
            await report("installing" if spec.install is not None else "running")
            outcome = await anyio.to_thread.run_sync(
                self._watch, started, stream, spec, on_output, abandon_on_cancel=True, limiter=self._watchers
            )
            return dataclasses.replace(outcome, warm_start=warm)
        finally:
            if stream is not None:
                stream.close()  # also ends a watcher abandoned by a cancellation
            if started is not None:
                await self._release(started)

    async def _release(self, started: StartedPod) -> None:
        """Delete a pod that served (or could not serve) its job: the pool's tasks do it without
        making the caller wait; without a pool, here, shielded from cancellation."""
        if self.pool is not None:
            self.pool.dispose(started)
        else:
            await self.remove(started)

    async def start_sandbox(self, shape: ContainerShape) -> StartedPod:
        """Create a pod of ``shape`` and wait until its launcher runs; it then waits for a job."""
        name = f"agent-sandbox-{secrets.token_hex(6)}"
        manifest = pod_manifest(
            shape, self.owner, self.settings, self.images.get(shape.image, shape.image), name
        )
        try:
            with anyio.CancelScope(shield=True):  # a cancelled create must still be deleted
                await anyio.to_thread.run_sync(self._create, manifest, limiter=self._calls)
            await anyio.to_thread.run_sync(
                self._wait_running, name, abandon_on_cancel=True, limiter=self._calls
            )
        except BaseException:
            await self.remove(StartedPod(name, shape))
            raise
        return StartedPod(name, shape)

    async def remove(self, started: StartedPod) -> None:
        """Delete a pod, shielded from cancellation."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._delete, started.name, limiter=self._calls)

    def _create(self, manifest: dict[str, Any]) -> None:
        with _api_errors(self, starting=True):
            self.api.create_namespaced_pod(
                self.namespace,
                manifest,  # type: ignore[arg-type]
                _request_timeout=_API_TIMEOUT_S,
            )

    def _wait_running(self, name: str) -> None:
        """Until the pod's container runs; an image that cannot be had, a pod that failed, or one
        not running after ``start_timeout_s`` (unschedulable, say) is an ``EngineError``."""
        deadline = time.monotonic() + self.settings.start_timeout_s
        why, pause_s = "not scheduled yet", 0.05
        while time.monotonic() < deadline:
            time.sleep(pause_s)
            pause_s = min(pause_s * 1.5, 0.5)
            try:
                status = self._read(self.api.read_namespaced_pod_status, name, self.namespace)["status"]
            except ApiException as exc:
                if exc.status == 404:
                    raise EngineError(f"the sandbox pod {name} was deleted before it started") from None
                if exc.status in _RETRY_STATUSES:
                    continue
                with _api_errors(self):
                    raise
            for condition in status.get("conditions") or ():
                if condition["type"] == "PodScheduled" and condition["status"] != "True":
                    why = f"not scheduled: {condition.get('message') or condition.get('reason')}"
            for container in status.get("containerStatuses") or ():
                state = container.get("state") or {}
                if "running" in state:
                    return
                if "waiting" in state:
                    waiting = state["waiting"]
                    why = f"{waiting.get('reason')}: {waiting.get('message', '')}".rstrip(": ")
                    if waiting.get("reason") in _IMAGE_NEVER:
                        raise ImageMissing(
                            f"pod {name} cannot get its image ({why}): load the sandbox image into the "
                            "nodes or push it where they can pull it, and check kubernetes.images "
                            "and image_pull_policy"
                        )
                if "terminated" in state:
                    raise EngineError(
                        f"the sandbox pod {name} ended before its job: {state['terminated'].get('reason')}"
                    )
            if status.get("phase") in ("Failed", "Succeeded"):
                raise EngineError(
                    f"the sandbox pod {name} {status['phase'].lower()} before its job: "
                    f"{status.get('reason', '')} {status.get('message', '')}".rstrip()
                )
        if why.startswith(_IMAGE_PULLS):
            raise ImageMissing(
                f"pod {name} could not pull its image within {self.settings.start_timeout_s:.0f} s ({why}): "
                "check kubernetes.images, the registry and the nodes' credentials for it"
            )
        raise EngineError(
            f"the sandbox pod {name} was not running after {self.settings.start_timeout_s:.0f} s ({why}); "
            "check the cluster's capacity and events (kubectl describe pod), or raise "
            "kubernetes.start_timeout_s"
        )

    def _attach(self, name: str) -> AttachStream:
        """Open the pod's attach stream, on an API client of its own."""
        api = k8s.CoreV1Api(k8s.ApiClient(self.configuration))
        try:
            with _api_errors(self, starting=True):
                stream = k8s_stream(
                    api.connect_get_namespaced_pod_attach,
                    name,
                    self.namespace,
                    container=CONTAINER,
                    stdin=True,
                    stdout=True,
                    stderr=True,
                    tty=False,
                    binary=True,
                    _preload_content=False,
                )
        finally:
            api.api_client.close()
        stream.sock.settimeout(_API_TIMEOUT_S)  # for writes: a stalled stream is a broken one
        return AttachStream(stream.sock)

    def _watch(
        self, started: StartedPod, stream: AttachStream, spec: RunSpec, on_output: OutputCallback | None
    ) -> Outcome:
        """Write the job session's payload, then feed the session the stdout and stderr channels
        (engine/session.py's ``drive``), deleting the pod when it says kill; where the launcher
        could not report, the pod's status says how the container ended."""
        session = JobSession(spec, on_output, resumable=False)  # the launcher is PID 1: see the module
        broken: list[str] = []  # why the stream ended early, if it broke
        killed: list[bool] = []

        def receive() -> list[tuple[int, bytes]] | None:
            try:
                chunks = stream.receive(TICK_S, _READ_BUDGET)
            except _CONNECTION_ERRORS as exc:
                broken.append(str(exc) or type(exc).__name__)
                return None
            return chunks if chunks or stream.open else None

        def act(due: Action) -> None:
            if due == "kill":  # never "resume": the session is not resumable here
                killed.append(True)
                threading.Thread(target=self._delete, args=(started.name,), daemon=True).start()

        try:
            self._send(stream, session.payload)
        except _CONNECTION_ERRORS as exc:
            broken.append(str(exc) or type(exc).__name__)
        if not broken:
            drive(session, receive, act)

        def final_state(look_for_oom: bool) -> tuple[int | None, bool]:
            try:
                return self._final_state(started.name, broken[0] if broken else "", bool(killed))
            except EngineError:
                # Asked only for a flag (the launcher reported) or after our own kill: the result
                # stands; only a job that ended unexplained is an infrastructure failure.
                if look_for_oom:
                    raise
                return None, False

        return session.outcome(final_state)

    def _send(self, stream: AttachStream, payload: bytes) -> None:
        """The job, its files and stdin, in frames: the launcher reads them all before the program
        starts, so writing everything before reading anything cannot deadlock."""
        view = memoryview(payload)
        for offset in range(0, len(view), _WRITE_CHUNK):
            stream.send(bytes(view[offset : offset + _WRITE_CHUNK]))

    def _final_state(self, name: str, broken: str, killed: bool) -> tuple[int | None, bool]:
        """Exit code and ``OOMKilled`` from the pod's status, waiting a moment for the kubelet to
        report it. A pod the cluster took away (evicted, deleted, its node lost) or a stream that
        broke under a running pod is an infrastructure failure, not a result."""
        deadline = time.monotonic() + _FINAL_STATE_WAIT_S
        while True:
            try:
                pod = self._read(self.api.read_namespaced_pod_status, name, self.namespace)
            except ApiException as exc:
                if exc.status == 404 and killed:
                    return None, False
                if exc.status == 404:
                    raise EngineError(
                        f"the sandbox pod {name} was deleted by someone else during the run (an eviction, "
                        "a drained node or an operator): an infrastructure failure, not the program's; "
                        "run it again"
                    ) from None
                raise EngineUnavailable(
                    f"the Kubernetes API server failed during the run: {exc.reason}"
                ) from None
            except _CONNECTION_ERRORS:
                raise EngineUnavailable(
                    f"the Kubernetes API server went away during the run (the pod {name}'s stream "
                    f"{'broke: ' + broken if broken else 'ended'}); the run was stopped: run it again"
                ) from None
            status = pod["status"]
            if status.get("reason") == "DeadlineExceeded":
                raise EngineError(
                    f"the sandbox pod {name} was ended by the cluster at its activeDeadlineSeconds "
                    f"(kubernetes.max_pod_lifetime_s = {self.settings.max_pod_lifetime_s}): raise it above "
                    "a warm wait, an install and the longest run"
                )
            if status.get("reason") == "Evicted" or ("deletionTimestamp" in pod["metadata"] and not killed):
                raise EngineError(
                    f"the sandbox pod {name} was evicted by the cluster during the run "
                    f"({status.get('message') or status.get('reason') or 'deleted'}): an infrastructure "
                    "failure, not the program's; run it again"
                )
            for container in status.get("containerStatuses") or ():
                terminated = (container.get("state") or {}).get("terminated")
                if terminated is not None:
                    return int(terminated["exitCode"]), terminated.get("reason") == "OOMKilled"
            if killed:
                return None, False
            if time.monotonic() >= deadline:
                node = pod["spec"].get("nodeName", "no node")
                raise EngineError(
                    f"lost the sandbox pod {name} on {node} mid-run (its stream "
                    f"{'broke: ' + broken if broken else 'ended'}, and the pod is still "
                    f"{status.get('phase')}): an infrastructure failure, likely the node or its kubelet "
                    "(or the API server instance carrying the stream); run it again"
                )
            time.sleep(0.1)

    def _delete(self, name: str) -> int:
        """Delete a pod with no grace period; 1 if this call deleted it. Never raises: it keeps
        trying while the API server is away (a restart), and the next start reaps what is left."""
        deadline = time.monotonic() + _REMOVE_RETRY_S
        while True:
            try:
                self.api.delete_namespaced_pod(
                    name, self.namespace, grace_period_seconds=0, _request_timeout=_API_TIMEOUT_S
                )
                return 1
            except ApiException as exc:
                if exc.status == 404:
                    return 0
                if exc.status not in _RETRY_STATUSES or time.monotonic() >= deadline:
                    log.warning("could not delete pod %s: %s", name, exc.reason)
                    return 0
                time.sleep(1)
            except _CONNECTION_ERRORS as exc:
                if time.monotonic() >= deadline:
                    log.warning("could not delete pod %s: %s", name, exc)
                    return 0
                time.sleep(1)

    def _nodes(self) -> tuple[dict[str, bool] | None, dict[str, int], list[str]]:
        """Each sandbox node's readiness (those ``node_selector`` picks), the images on ready ones
        (with their sizes), and notes on what could not be read."""
        selector = ",".join(f"{key}={value}" for key, value in self.settings.node_selector.items())
        try:
            nodes = self._read(self.api.list_node, label_selector=selector)["items"]
        except ApiException as exc:
            return None, {}, [f"nodes not readable ({exc.reason}): node readiness and images unknown"]
        except _CONNECTION_ERRORS as exc:
            return None, {}, [f"nodes not readable ({exc})"]
        ready = {
            str(node["metadata"]["name"]): any(
                c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions") or ()
            )
            for node in nodes
        }
        images = {
            str(image_name): int(image.get("sizeBytes") or 0)
            for node in nodes
            if ready[node["metadata"]["name"]]
            for image in node["status"].get("images") or ()
            for image_name in image.get("names") or ()
        }
        return ready, images, []

    def _runtime_classes(self, notes: list[str]) -> list[str] | None:
        try:
            classes = self._read(k8s.NodeV1Api(self.api.api_client).list_runtime_class)["items"]
            return sorted(str(runtime_class["metadata"]["name"]) for runtime_class in classes)
        except (ApiException, *_CONNECTION_ERRORS) as exc:
            notes.append(f"runtime classes not readable ({getattr(exc, 'reason', exc)})")
            return None


def _image_size(image: str, sizes: dict[str, int]) -> int | None:
    """The size of ``image`` if a ready node lists it (as written, or as container runtimes
    spell a short name: docker.io/library/NAME, docker.io/USER/NAME)."""
    candidates = [image]
    if "/" not in image:
        candidates.append(f"docker.io/library/{image}")
    elif image.count("/") == 1 and "." not in image.split("/")[0] and ":" not in image.split("/")[0]:
        candidates.append(f"docker.io/{image}")
    return next((sizes[name] for name in candidates if name in sizes), None)


@contextlib.contextmanager
def _api_errors(engine: KubernetesEngine, starting: bool = False) -> Iterator[None]:
    """The client's errors as ours, in one place: a server that is not there; one that refused
    (our rights, the namespace, or, while ``starting`` a pod, what the configuration asks for)."""
    try:
        yield
    except ApiException as exc:
        reason = _api_message(exc)
        # A refused websocket handshake (attach) comes as status 0 with the HTTP status in words.
        if not exc.status and (status := re.search(r"Handshake status (\d{3})", str(exc.reason))):
            exc.status = int(status.group(1))
        if exc.status == 401 or (exc.status == 403 and "cannot" in reason):  # RBAC: "... cannot create ..."
            raise EngineUnavailable(
                f"the Kubernetes API server refused us ({reason}): give the server's account the Role "
                f"in deploy/kubernetes (pods, pods/attach in namespace {engine.namespace})"
            ) from None
        if exc.status == 404 and not starting:
            raise EngineUnavailable(
                f"the Kubernetes API server does not know it ({reason}); check kubernetes.namespace "
                f"({engine.namespace}: kubectl apply -k deploy/kubernetes creates it)"
            ) from None
        if starting and exc.status and exc.status < 500:
            raise EngineError(
                f"the Kubernetes API server refused the sandbox pod: {reason}; check the limits and "
                "[kubernetes] settings against the cluster (agent-sandbox doctor)"
            ) from None
        raise EngineUnavailable(f"the Kubernetes API server failed: {reason}") from None
    except _CONNECTION_ERRORS as exc:
        raise EngineUnavailable(
            f"no Kubernetes API server answers at {engine.configuration.host} ({exc}); "
            "check kubernetes.kubeconfig and that the cluster is up"
        ) from None


def _api_message(exc: ApiException) -> str:
    """The API server's own message, if it sent one, else the HTTP reason."""
    with contextlib.suppress(ValueError, TypeError):
        return str(json.loads(exc.body or "")["message"])
    return f"{exc.status} {exc.reason}"
