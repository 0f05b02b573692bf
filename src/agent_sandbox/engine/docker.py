"""The Docker backend: one fresh hardened container per run, destroyed after. The only code that
talks to Docker, and the first implementation of ``engine/base.py``'s ``Engine``.

A container is created, attached to (stdin, stdout, stderr) and started with the launcher
waiting for a job: at once for a cold run, ahead of time for the warm pool. A run then streams
the job session's payload into it and feeds the session what comes back, demultiplexed from
Docker's attach frames, until the launcher's end-of-job line is in on both streams, doing what
the session says is due (SIGCONT to a stopped launcher, SIGKILL for time or output); where the
launcher could not report, Docker's ``State`` and its OOM events say how the container ended.
The container is removed on every path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import LogConfig, Mount, Ulimit

from agent_sandbox.config import GVISOR, EngineSettings
from agent_sandbox.engine.base import (
    ENGINE_CALL_THREADS,
    EngineHealth,
    ImageState,
    OutputCallback,
    ProgressCallback,
    RuntimeState,
    no_progress,
)
from agent_sandbox.engine.launch import (
    BASE_ENV,
    SANDBOX_UID,
    WORKDIR,
    file_size_rlimit,
    launcher_command,
    orphaned,
    owner_id,
)
from agent_sandbox.engine.pool import WarmPool
from agent_sandbox.engine.session import TICK_S, JobSession, drive
from agent_sandbox.engine.spec import ContainerShape, Outcome, RunSpec
from agent_sandbox.errors import EngineError, EngineUnavailable, ImageMissing

LABEL = "io.agent-sandbox"
OWNER_LABEL = "io.agent-sandbox.owner"
SANDBOX_USER = f"{SANDBOX_UID}:{SANDBOX_UID}"
WHEELS_DIR = "/wheels"
PACKAGES_DIR = "/packages"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
RUNTIME_FIX = (
    "register it in /etc/docker/daemon.json (scripts/ensure-engine.sh does for runsc) and reload dockerd"
)
# Host tasks gVisor's Sentry needs for itself (measured: 38 idle) and per sandboxed process
# (about 5 each on its default ptrace platform; threads cost far less).
_GVISOR_HOST_TASKS = 64
_GVISOR_HOST_TASKS_PER_PROCESS = 8
# What docker-py raises when the engine refuses, fails or is not there.
_DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)
_FRAME_HEADER = struct.Struct(">BxxxL")

log = logging.getLogger(__name__)


def container_options(shape: ContainerShape, owner: str) -> dict[str, Any]:
    """The hardened ``containers.create`` arguments for a container of ``shape``.

    The container starts the launcher with no job: files, command, env and stdin come later
    over the attach stream, so the same options serve cold starts and the warm pool."""
    tmpfs_flags = "uid=1000,gid=1000,noexec,nosuid,nodev"
    memory = shape.memory_mib * 1024 * 1024
    file_size = file_size_rlimit(shape.file_size_mib)
    tmpfs = {
        WORKDIR: f"size={shape.work_mib}m,{tmpfs_flags}",
        "/tmp": f"size={shape.tmp_mib}m,{tmpfs_flags}",
    }
    if shape.shm_mib:
        # multiprocessing's semaphores and queues need it. ipc_mode "none" still gives the
        # container an IPC namespace of its own; this is a tmpfs of its own, in its memory.
        tmpfs["/dev/shm"] = f"size={shape.shm_mib}m,{tmpfs_flags}"
    host_tasks, process_rlimit = _process_limit(shape)
    mounts = []
    if shape.packages is not None:
        # Docker's tmpfs default is noexec: say exec, or no C extension could load from it.
        tmpfs[PACKAGES_DIR] = f"size={shape.packages.packages_mib}m,uid=1000,gid=1000,exec,nosuid,nodev"
        mounts.append(Mount(WHEELS_DIR, shape.packages.wheels_dir, type="bind", read_only=True))
    return {
        "image": shape.image,
        "name": f"agent-sandbox-{secrets.token_hex(6)}",
        "command": launcher_command(relay_output=shape.runtime == GVISOR),
        "entrypoint": [],
        "working_dir": WORKDIR,
        "user": SANDBOX_USER,
        "environment": BASE_ENV,
        "labels": {LABEL: "1", OWNER_LABEL: owner},
        "stdin_open": True,  # docker-py then sets StdinOnce: stdin closes when we half-close
        "tty": False,
        **({"network_mode": shape.network} if shape.network else {"network_disabled": True}),
        **({"runtime": shape.runtime} if shape.runtime else {}),
        "read_only": True,
        "tmpfs": tmpfs,
        "mounts": mounts,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": host_tasks,
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(shape.cpus * 1e9),
        "cpu_shares": shape.cpu_shares,
        "ulimits": [
            Ulimit(name="nofile", soft=shape.open_files, hard=shape.open_files),
            Ulimit(name="fsize", soft=file_size, hard=file_size),
            Ulimit(name="core", soft=0, hard=0),
            *process_rlimit,
        ],
        "ipc_mode": "none",
        "init": True,
        "cgroupns": "private",
        "log_config": LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
    }


def _process_limit(shape: ContainerShape) -> tuple[int, list[Ulimit]]:
    """The host's pids limit and the rlimits that hold the program to ``shape.pids`` processes and
    threads. Under runc the pids cgroup counts exactly those. Under gVisor it counts the Sentry's
    own host threads and stub processes instead, and a fork bomb that exhausts it kills the
    whole sandbox with no word why; so gVisor's kernel enforces the limit as RLIMIT_NPROC, which
    it counts inside the sandbox (EAGAIN, as under runc), and the cgroup only bounds the Sentry.
    (Under runc RLIMIT_NPROC would count every process of uid 1000 on the host.)"""
    if shape.runtime != GVISOR:
        return shape.pids, []
    host_tasks = _GVISOR_HOST_TASKS + _GVISOR_HOST_TASKS_PER_PROCESS * shape.pids
    return host_tasks, [Ulimit(name="nproc", soft=shape.pids, hard=shape.pids)]


@dataclass
class StartedContainer:
    """A running container whose launcher waits for its one job on stdin."""

    container: Container
    attachment: _Attachment
    shape: ContainerShape
    started_at: float = field(default_factory=time.monotonic)

    def looks_alive(self) -> bool:
        """An idle launcher writes nothing, so a readable attach stream means it has ended."""
        poller = select.poll()
        poller.register(self.attachment.sock, select.POLLIN | select.POLLHUP | select.POLLERR)
        return not poller.poll(0)


class DockerEngine:
    """Runs ``RunSpec``s in fresh containers (see the module docstring). How many at once is its
    caller's to decide (``Sandbox``'s admission); it sizes its worker threads for
    ``max_concurrent_runs``."""

    name = "the Docker engine"

    def __init__(self, settings: EngineSettings, client: docker.DockerClient | None = None):
        self.settings = settings
        self.owner = owner_id()
        self._client = client
        # Our own worker threads: a run's watcher holds one for its whole run, and anyio's shared
        # default pool also serves the stdio transport, which must keep reading requests.
        self._watchers = anyio.CapacityLimiter(settings.max_concurrent_runs)
        self._calls = anyio.CapacityLimiter(ENGINE_CALL_THREADS)
        self.pool: WarmPool[StartedContainer] | None = None  # the warm pool, while there is one

    @property
    def client(self) -> docker.DockerClient:
        """The Docker client, connected on first use."""
        if self._client is None:
            with docker_errors():
                if self.settings.docker_host:
                    self._client = docker.DockerClient(base_url=self.settings.docker_host)
                else:
                    self._client = docker.from_env()
        return self._client

    def health(self, images: Sequence[str], runtime: str) -> EngineHealth:
        """The engine's version and runtimes, ``images`` and the ``runtime`` sandboxes use, and what
        keeps runs from starting (each problem with its fix): images first, then the runtime."""
        where = self.settings.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
        try:
            version = self.version()
            try:
                info: dict[str, Any] = self.client.info()
            except _DOCKER_ERRORS as exc:
                raise EngineUnavailable(unreachable(exc)) from None
        except EngineError as exc:  # no engine: nothing else can be known
            return EngineHealth(f"Docker at {where}", None, problems=[exc])
        problems: list[EngineError] = []
        states = []
        for image in images:
            try:
                attrs = self.image_attrs(image)
            except ImageMissing as exc:
                problems.append(exc)
                states.append(ImageState(image, False, problem=str(exc)))
            except EngineError as exc:  # it went away meanwhile
                return EngineHealth(f"Docker at {where}", None, problems=[exc])
            else:
                created = datetime.datetime.fromisoformat(attrs["Created"][:19]).strftime("%Y-%m-%d %H:%M")
                states.append(ImageState(image, True, int(attrs["Size"]), created))
        state = _runtime_state(info, runtime)
        if runtime and runtime not in state.offered:
            problems.append(
                EngineUnavailable(
                    f"engine.runtime is {runtime!r}, but the Docker engine offers only "
                    f"{', '.join(state.offered)}: {RUNTIME_FIX}, or set engine.runtime to one of those"
                )
            )
        return EngineHealth(f"Docker {version} at {where}", version, state, states, problems)

    def reap(self, older_than_s: float) -> int:
        """Remove sandbox containers that no live process will remove; returns how many.

        That is: those of a process in this host's PID namespace that has ended, and any older than
        ``older_than_s`` (longer than a run and a warm wait can last), whoever made them. A live
        server elsewhere on the same engine keeps its containers."""
        now = time.time()
        removed = 0
        # The plain list (no per-container inspect) cannot race with containers going away.
        with docker_errors():
            summaries = self.client.api.containers(all=True, filters={"label": LABEL})
        for summary in summaries:
            owner = (summary.get("Labels") or {}).get(OWNER_LABEL, "")
            if owner == self.owner:
                continue
            if orphaned(owner, self.owner) or now - float(summary.get("Created", 0)) > older_than_s:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    self.client.api.remove_container(summary["Id"], force=True)
                    removed += 1
        return removed

    def close(self) -> int:
        """Remove every container this process still has; how many."""
        removed = 0
        for container in self.our_containers():
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)
                removed += 1
        return removed

    def our_containers(self) -> list[Container]:
        """Containers this process created that still exist (sparse: id, name and status)."""
        mine: dict[str, str | list[str] | bool] = {"label": f"{OWNER_LABEL}={self.owner}"}
        with docker_errors():
            return list(self.client.containers.list(all=True, filters=mine, sparse=True))

    @contextlib.asynccontextmanager
    async def warm(
        self, shape: ContainerShape, size: int, max_idle_s: float, max_size: int = 0
    ) -> AsyncIterator[WarmPool[StartedContainer]]:
        """Keep ``size`` (up to ``max_size`` under load) containers of ``shape`` started while the
        block lasts (engine/pool.py)."""
        async with WarmPool(self, shape, size, max_idle_s, max_size) as pool:
            yield pool

    async def run(
        self,
        spec: RunSpec,
        on_progress: ProgressCallback | None = None,
        on_output: OutputCallback | None = None,
    ) -> Outcome:
        """Run ``spec`` in a container of its own (warm if one is ready, else a new one) and remove
        the container, whatever happens (cancellation too). ``on_output`` sees the output live."""
        report = on_progress or no_progress
        started = self.pool.take(spec.shape) if self.pool else None
        warm = started is not None
        if started is None:
            await report("starting")
            started = await self.start_sandbox(spec.shape)
        try:
            await report("installing" if spec.install is not None else "running")
            outcome = await anyio.to_thread.run_sync(
                self._watch, started, spec, on_output, abandon_on_cancel=True, limiter=self._watchers
            )
            return dataclasses.replace(outcome, warm_start=warm)
        finally:
            if self.pool is not None:
                self.pool.dispose(started)  # the caller has its result; tear down meanwhile
            else:
                await self.remove(started)

    async def start_sandbox(self, shape: ContainerShape) -> StartedContainer:
        """Create, attach to and start a container of ``shape``; it then waits for a job."""
        with anyio.CancelScope(shield=True):  # a cancelled create must still hand us the id
            container = await anyio.to_thread.run_sync(self._create, shape, limiter=self._calls)
        try:
            attachment = await anyio.to_thread.run_sync(
                self._attach_and_start, container, limiter=self._calls
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._remove, container, limiter=self._calls)
            raise
        return StartedContainer(container, attachment, shape)

    async def remove(self, started: StartedContainer) -> None:
        """Force-remove a container, shielded from cancellation."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._remove, started.container, limiter=self._calls)

    def version(self) -> str:
        """The engine's version; fails with a fix unless it answers over a transport we support."""
        if self.client.api.base_url.startswith(("https://", "http+docker://ssh")):
            raise EngineUnavailable(
                f"the Docker engine at {self.client.api.base_url} is reached over TLS or SSH, which "
                "agent-sandbox does not support yet; use the local socket or a plain tcp:// address"
            )
        try:
            return str(self.client.version().get("Version", "?"))
        except _DOCKER_ERRORS as exc:
            raise EngineUnavailable(unreachable(exc)) from None

    def image_attrs(self, image: str) -> dict[str, Any]:
        """What the engine knows of ``image``; ``ImageMissing``, with how to build it, if absent."""
        try:
            with docker_errors():
                attrs: dict[str, Any] = self.client.images.get(image).attrs
        except ImageMissing:
            raise _image_missing(image) from None
        return attrs

    def _create(self, shape: ContainerShape) -> Container:
        options = container_options(shape, self.owner)
        try:
            with docker_errors(starting=True):
                return self.client.containers.create(**options)
        except ImageMissing:
            raise _image_missing(shape.image) from None
        except EngineError:
            # The engine may have made the container even though the call failed (a client-side
            # timeout, or the lookup after the create): remove it by its name.
            with contextlib.suppress(*_DOCKER_ERRORS):
                self.client.api.remove_container(options["name"], force=True)
            raise

    def _attach_and_start(self, container: Container) -> _Attachment:
        with docker_errors(starting=True):
            attached = self.client.api.attach_socket(
                container.name or "", params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
        attachment = _Attachment(attached)
        try:
            with docker_errors(starting=True):
                container.start()
        except EngineError:
            attachment.sock.close()
            raise
        return attachment

    def _watch(self, started: StartedContainer, spec: RunSpec, on_output: OutputCallback | None) -> Outcome:
        """Pump the job session's payload in and the container's frames out (engine/session.py's
        ``drive``), SIGCONT or SIGKILL as the session says; where the launcher could not report,
        Docker's state and OOM events say how the container ended."""
        container, stream = started.container, started.attachment.sock
        session = JobSession(spec, on_output)
        job_sent_at = time.time()
        finished = threading.Event()
        threading.Thread(target=_feed, args=(stream, session.payload, finished), daemon=True).start()
        decoder = FrameDecoder()
        stream.settimeout(TICK_S)

        def receive() -> list[tuple[int, bytes]] | None:
            try:
                chunk = stream.recv(1 << 16)
            except TimeoutError:
                return []
            except OSError:
                return None
            return decoder.feed(chunk) if chunk else None

        with stream:
            drive(
                session, receive, lambda due: _signal(container, "SIGCONT" if due == "resume" else "SIGKILL")
            )
        finished.set()

        def final_state(look_for_oom: bool) -> tuple[int | None, bool]:
            exit_code, oom_killed = _final_state(container)
            if exit_code == 137 and not oom_killed and look_for_oom:
                oom_killed = _oom_event_since(container, job_sent_at)
            return exit_code, oom_killed

        return session.outcome(final_state)

    def _remove(self, container: Container) -> None:
        """Force-remove; never raises (an engine that is gone cannot keep it anyway, and the
        next start-up reaps what is left)."""
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except _DOCKER_ERRORS as exc:
            if "already in progress" not in str(exc):
                log.warning("could not remove %s: %s", container.name, exc)


class FrameDecoder:
    """Splits Docker's non-TTY attach stream (8-byte header, then payload) into frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """Add bytes from the socket; return the complete ``(stream, payload)`` frames."""
        self._buffer += chunk
        frames = []
        while len(self._buffer) >= _FRAME_HEADER.size:
            stream, size = _FRAME_HEADER.unpack_from(self._buffer)
            end = _FRAME_HEADER.size + size
            if len(self._buffer) < end:
                break
            frames.append((stream, bytes(self._buffer[_FRAME_HEADER.size : end])))
            del self._buffer[:end]
        return frames


class _Attachment:
    """The attach connection: docker-py's wrapper (kept alive) and the socket under it."""

    def __init__(self, wrapper: Any):
        self.wrapper = wrapper
        # We need the socket itself for read timeouts and the half-close that ends stdin.
        self.sock: socket.socket = getattr(wrapper, "_sock", wrapper)


def _feed(stream: socket.socket, payload: bytes, finished: threading.Event) -> None:
    """Write the job, the files and stdin, then half-close so the program sees end of input.

    It writes through its own socket object: the reader's short timeouts would otherwise cut a
    write to a program that reads its stdin late."""
    with stream.dup() as writer:
        writer.settimeout(TICK_S)
        unsent = memoryview(payload)
        while unsent and not finished.is_set():
            try:
                unsent = unsent[writer.send(unsent[: 1 << 16]) :]
            except TimeoutError:
                continue
            except OSError:
                return  # the container ended before reading all its input
        with contextlib.suppress(OSError):
            writer.shutdown(socket.SHUT_WR)


def _signal(container: Container, signal: str) -> None:
    """Send ``signal`` to the container's init (which passes it on to the launcher; SIGKILL ends
    the container) without waiting: the engine only finishes a kill once the output it holds is
    delivered, so the caller must go on reading the stream meanwhile."""

    def send() -> None:
        with contextlib.suppress(*_DOCKER_ERRORS):
            container.kill(signal=signal)

    threading.Thread(target=send, daemon=True).start()


def _runtime_state(info: dict[str, Any], configured: str) -> RuntimeState:
    """The runtime sandboxes run under, what else is offered, and what the engine cannot enforce."""
    default = str(info.get("DefaultRuntime", "?"))
    security = ", ".join(
        option.split(",")[0].removeprefix("name=") for option in info.get("SecurityOptions", [])
    )
    weaknesses = []
    missing = [name for name, key in (("memory", "MemoryLimit"), ("pids", "PidsLimit")) if not info.get(key)]
    if missing:
        weaknesses.append(
            f"the engine cannot enforce {' and '.join(missing)} limits: enable those cgroup "
            "controllers in the kernel (e.g. cgroup_enable=memory on its command line)"
        )
    if "seccomp" not in security:
        weaknesses.append("no seccomp: use a Docker built with seccomp support")
    return RuntimeState(
        used=configured or default,
        default=default,
        offered=tuple(sorted(info.get("Runtimes") or {})),
        details=f"cgroup v{info.get('CgroupVersion', '?')}; security: {security}",
        fix=RUNTIME_FIX,
        weaknesses=tuple(weaknesses),
    )


def _final_state(container: Container) -> tuple[int | None, bool]:
    """Exit code and Docker's OOMKilled flag (read even on exit 0: a child may have been killed).

    An engine that went away mid-run is an infrastructure failure, not a result."""
    try:
        status = container.wait(timeout=30)
        container.reload()
    except docker.errors.NotFound:
        return None, False
    except requests.exceptions.ConnectionError as exc:
        raise EngineUnavailable(f"the Docker engine went away during the run; {unreachable(exc)}") from None
    except _DOCKER_ERRORS:
        return None, False
    state = container.attrs.get("State", {})
    exit_code = status.get("StatusCode", state.get("ExitCode"))
    return (int(exit_code) if exit_code is not None else None), bool(state.get("OOMKilled"))


def _oom_event_since(container: Container, since: float) -> bool:
    """Whether the engine logged an OOM event for ``container`` since ``since`` (waiting a second
    for one still on its way). For a sandbox that died whole with SIGKILL (under gVisor, an OOM
    kills the Sentry, launcher and all): Docker sets OOMKilled only if its OOM event came before
    the exit, which runsc does not promise."""
    try:
        events = container.client.events(  # type: ignore[union-attr]
            since=int(since) - 1,
            until=int(time.time()) + 1,
            filters={"container": container.id, "event": "oom"},
            decode=True,
        )
        return any(True for _ in events)
    except _DOCKER_ERRORS:
        return False


def _image_missing(image: str) -> ImageMissing:
    profile = image.rpartition(":")[2]  # our images are tagged REPOSITORY:PROFILE
    return ImageMissing(
        f"the sandbox image {image} is not on the Docker engine; build it with "
        f"`agent-sandbox image build --profile {profile}`"
    )


@contextlib.contextmanager
def docker_errors(starting: bool = False) -> Iterator[None]:
    """docker-py's errors as ours, in one place: an image it cannot find; while ``starting`` a
    container, an engine that answered and refused (the configuration asks for something this
    machine cannot give); an engine that is not there."""
    try:
        yield
    except docker.errors.ImageNotFound:
        raise ImageMissing("image not found") from None
    except docker.errors.APIError as exc:
        if not starting or exc.response is None:
            raise EngineUnavailable(unreachable(exc)) from None
        raise EngineError(
            f"the Docker engine refused to run the sandbox container: {exc.explanation or exc}; "
            "check the limits in the configuration against this machine (agent-sandbox doctor)"
        ) from None
    except _DOCKER_ERRORS as exc:
        raise EngineUnavailable(unreachable(exc)) from None


def unreachable(exc: BaseException) -> str:
    """What to tell someone whose engine does not answer."""
    return (
        f"no Docker engine answers ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
        "start one with `scripts/ensure-engine.sh` (Debian, as root) or set DOCKER_HOST"
    )
