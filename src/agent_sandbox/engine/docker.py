"""The only code that talks to Docker: one fresh hardened container per run, destroyed after.

A container is created, attached to (stdin, stdout, stderr) and started with the launcher
waiting for a job: at once for a cold run, ahead of time for the warm pool. A run then streams
the job, the tar and the caller's stdin into it (the launcher unpacks the files under the tmpfs
/work and runs the program as its child), reads both output streams until the launcher's
end-of-job line is in on both, or the program is killed for time or output (then Docker's
``State`` gives the exit code and ``OOMKilled``), and removes the container on every path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import select
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_thread
import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import LogConfig, Mount, Ulimit

from agent_sandbox.config import GVISOR, EngineSettings
from agent_sandbox.engine.spec import ContainerShape, FilesOut, InstallOutcome, Outcome, RunSpec
from agent_sandbox.engine.streams import (
    SNAPSHOT_PREFIX,
    STDERR,
    STDOUT,
    Capture,
    EndOfJob,
    FilesBlock,
    FrameDecoder,
    InstallDone,
)

LABEL = "io.agent-sandbox"
OWNER_LABEL = "io.agent-sandbox.owner"
SANDBOX_USER = "1000:1000"
WORKDIR = "/work"
WHEELS_DIR = "/wheels"
PACKAGES_DIR = "/packages"
LAUNCHER = (Path(__file__).parent / "launcher.py").read_text()
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": WORKDIR,
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",  # output printed before a kill must not die in a buffer
    "PYTHONDONTWRITEBYTECODE": "1",
    # Caches go to /tmp, not under HOME=/work, where they would come back as the program's files.
    "XDG_CACHE_HOME": "/tmp/.cache",
    "MPLCONFIGDIR": "/tmp/matplotlib",
}
_TICK_S = 0.1
_ENGINE_CALL_THREADS = 16
_DRAIN_S = 2.0
_FILES_GRACE_S = 30.0  # to stream the files out once the program has ended
_LAUNCHER_GRACE_S = 5.0  # for the launcher to stop a program at its time limit itself
_UNPACK_BYTES_PER_S = 10 * 1024 * 1024  # a slow guess, for the backstop only
# Host tasks gVisor's Sentry needs for itself (measured: 38 idle) and per sandboxed process
# (about 5 each on its default ptrace platform; threads cost far less).
_GVISOR_HOST_TASKS = 64
_GVISOR_HOST_TASKS_PER_PROCESS = 8


class ProgressCallback(Protocol):
    """Told each stage of a run as it starts: resolving, queued (``detail``: how many wait
    ahead, told again as that changes), starting, installing, running."""

    def __call__(self, stage: str, detail: str = "") -> Awaitable[None]: ...


# Called from the watcher thread as the program's output arrives: the stream (1 stdout, 2 stderr)
# and its bytes, with the launcher's own lines and files already taken out.
OutputCallback = Callable[[int, bytes], None]


class EngineError(Exception):
    """The sandbox could not run the program; the message says what to fix."""


class EngineUnavailable(EngineError):
    """No Docker engine answers."""


class ImageMissing(EngineError):
    """The sandbox image is not on the engine."""


def owner_id(pid: int | None = None) -> str:
    """Identifies a process (this one by default) in container labels, to tell our leftovers
    from live runs: ``HOST/pidns:N:PID``. The PID namespace is part of it, so a server that
    shares the host's name but not its pids (a container run with ``--uts host``) never takes
    another's live containers for orphans. Without /proc (macOS, Windows) N is 0."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/pidns:{namespace}:{pid or os.getpid()}"


def owner_place(owner: str) -> str:
    """The host and PID namespace part of an ``owner_id``: where its pid means something."""
    return owner.rpartition(":")[0]


def container_options(shape: ContainerShape, owner: str) -> dict[str, Any]:
    """The hardened ``containers.create`` arguments for a container of ``shape``.

    The container starts the launcher with no job: files, command, env and stdin come later
    over the attach stream, so the same options serve cold starts and the warm pool."""
    tmpfs_flags = "uid=1000,gid=1000,noexec,nosuid,nodev"
    memory = shape.memory_mib * 1024 * 1024
    file_size = shape.file_size_mib * 1024 * 1024
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
        "command": ["python3", "-I", "-S", "-c", LAUNCHER],
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


class ContainerSource(Protocol):
    """Hands out containers started ahead of time (the warm pool)."""

    def take(self, shape: ContainerShape) -> StartedContainer | None:
        """A started container of ``shape``, or None when there is none to give."""

    def dispose(self, started: StartedContainer) -> None:
        """Remove a used container in the background."""


class DockerEngine:
    """Runs ``RunSpec``s in fresh containers; how many at once is the caller's to decide
    (``Sandbox``'s admission), this engine only sizes its threads for ``max_concurrent_runs``."""

    def __init__(self, settings: EngineSettings, client: docker.DockerClient | None = None):
        self.settings = settings
        self.owner = owner_id()
        self._client = client
        # Our own worker threads: a run's watcher holds one for its whole run, and anyio's shared
        # default pool also serves the stdio transport, which must keep reading requests.
        self._watchers = anyio.CapacityLimiter(settings.max_concurrent_runs)
        self._calls = anyio.CapacityLimiter(_ENGINE_CALL_THREADS)
        self.warm: ContainerSource | None = None

    @property
    def client(self) -> docker.DockerClient:
        """The Docker client, connected on first use."""
        if self._client is None:
            try:
                if self.settings.docker_host:
                    self._client = docker.DockerClient(base_url=self.settings.docker_host)
                else:
                    self._client = docker.from_env()
            except docker.errors.DockerException as exc:
                raise EngineUnavailable(unreachable(exc)) from None
        return self._client

    def check(self, image: str) -> str:
        """Fail with a fix unless the engine answers and ``image`` is present; returns its version."""
        version = self.version()
        self.image_attrs(image)
        return version

    def version(self) -> str:
        """The engine's version; fails with a fix unless it answers over a transport we support."""
        if self.client.api.base_url.startswith(("https://", "http+docker://ssh")):
            raise EngineUnavailable(
                f"the Docker engine at {self.client.api.base_url} is reached over TLS or SSH, which "
                "agent-sandbox does not support yet; use the local socket or a plain tcp:// address"
            )
        try:
            return str(self.client.version().get("Version", "?"))
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineUnavailable(unreachable(exc)) from None

    def runtimes(self) -> tuple[str, list[str]]:
        """The engine's default runtime and every runtime it offers."""
        try:
            info = self.client.info()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineUnavailable(unreachable(exc)) from None
        return str(info.get("DefaultRuntime", "")), sorted(info.get("Runtimes") or {})

    def require_runtime(self, wanted: str) -> None:
        """Fail with a fix unless the engine offers runtime ``wanted`` (empty: its default)."""
        if wanted and wanted not in (offered := self.runtimes()[1]):
            raise EngineUnavailable(
                f"engine.runtime is {wanted!r}, but the Docker engine offers only {', '.join(offered)}: "
                f"register it in /etc/docker/daemon.json (scripts/ensure-engine.sh does for runsc, "
                "gVisor) and reload dockerd, or set engine.runtime to one of those"
            )

    def image_attrs(self, image: str) -> dict[str, Any]:
        """What the engine knows of ``image``; ``ImageMissing``, with how to build it, if absent."""
        try:
            attrs: dict[str, Any] = self.client.images.get(image).attrs
        except docker.errors.ImageNotFound:
            raise _image_missing(image) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineUnavailable(unreachable(exc)) from None
        return attrs

    def remove_leftovers(self, older_than_s: float) -> int:
        """Remove sandbox containers that no live process will remove; returns how many.

        That is: those of a process in this host's PID namespace that has ended, and any older than
        ``older_than_s`` (longer than a run and a warm wait can last), whoever made them. A live
        server elsewhere on the same engine keeps its containers."""
        here = owner_place(self.owner)
        now = time.time()
        removed = 0
        # The plain list (no per-container inspect) cannot race with containers going away.
        for summary in self.client.api.containers(all=True, filters={"label": LABEL}):
            owner = (summary.get("Labels") or {}).get(OWNER_LABEL, "")
            if owner == self.owner:
                continue
            orphaned = owner_place(owner) == here and not _process_alive(owner.rpartition(":")[2])
            if orphaned or now - float(summary.get("Created", 0)) > older_than_s:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    self.client.api.remove_container(summary["Id"], force=True)
                    removed += 1
        return removed

    def our_containers(self) -> list[Container]:
        """Containers this process created that still exist (sparse: id, name and status)."""
        mine: dict[str, str | list[str] | bool] = {"label": f"{OWNER_LABEL}={self.owner}"}
        return list(self.client.containers.list(all=True, filters=mine, sparse=True))

    async def run(
        self,
        spec: RunSpec,
        on_progress: ProgressCallback | None = None,
        on_output: OutputCallback | None = None,
    ) -> Outcome:
        """Run ``spec`` in a container of its own (warm if one is ready, else a new one) and remove
        the container, whatever happens (cancellation too). ``on_output`` sees the output live."""
        report = on_progress or _ignore
        started = self.warm.take(spec.shape) if self.warm else None
        warm = started is not None
        if started is None:
            await report("starting")
            started = await self.start_container(spec.shape)
        try:
            await report("installing" if spec.install is not None else "running")
            outcome = await anyio.to_thread.run_sync(
                self._watch, started, spec, on_output, abandon_on_cancel=True, limiter=self._watchers
            )
            return dataclasses.replace(outcome, warm_start=warm)
        finally:
            if self.warm is not None:
                self.warm.dispose(started)  # the caller has its result; tear down meanwhile
            else:
                await self.remove(started)

    async def start_container(self, shape: ContainerShape) -> StartedContainer:
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

    def _create(self, shape: ContainerShape) -> Container:
        options = container_options(shape, self.owner)
        try:
            return self.client.containers.create(**options)
        except docker.errors.ImageNotFound:
            raise _image_missing(shape.image) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            # The engine may have made the container even though the call failed (a client-side
            # timeout, or the lookup after the create): remove it by its name.
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                self.client.api.remove_container(options["name"], force=True)
            raise _engine_error(exc) from None

    def _attach_and_start(self, container: Container) -> _Attachment:
        try:
            attached = self.client.api.attach_socket(
                container.name or "", params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise _engine_error(exc) from None
        attachment = _Attachment(attached)
        try:
            container.start()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            attachment.sock.close()
            raise _engine_error(exc) from None
        return attachment

    def _watch(
        self, started_container: StartedContainer, spec: RunSpec, on_output: OutputCallback | None
    ) -> Outcome:
        """Send the job, collect output until the launcher's end-of-job line is in on both streams
        (or the stream ends), and kill the container on timeout or flood."""
        container, stream = started_container.container, started_container.attachment.sock
        limits = spec.limits
        nonce, install_nonce = secrets.token_hex(16), secrets.token_hex(16)
        started = program_started = time.monotonic()
        job_sent_at = time.time()
        # With requirements, the install gets its own time; the program's starts after it.
        installing = InstallDone(install_nonce) if spec.install is not None else None
        # The launcher stops the program at its limit; ours is the backstop should it not.
        unpack_s = len(spec.archive) / _UNPACK_BYTES_PER_S  # the launcher's timer starts after it
        program_deadline_s = limits.timeout_s + _LAUNCHER_GRACE_S + unpack_s
        deadline = started + (spec.install.timeout_s if spec.install is not None else program_deadline_s)
        payload = spec.header(nonce, install_nonce) + spec.archive + (spec.stdin or b"")
        finished = threading.Event()
        threading.Thread(target=_feed, args=(stream, payload, finished), daemon=True).start()

        cap = limits.output_capture_kib * 1024
        captures = {STDOUT: Capture(cap), STDERR: Capture(cap)}

        watchers = [on_output] if on_output is not None else []

        def keep(kind: int, data: bytes) -> None:
            captures[kind].add(data)
            for watcher in watchers if data else ():
                try:
                    watcher(kind, data)
                except Exception as exc:  # a reader that went away must not cost the result
                    logging.getLogger(__name__).warning("live output stopped: %s", exc)
                    watchers.clear()

        ends = {STDOUT: EndOfJob(nonce), STDERR: EndOfJob(nonce)}
        files = FilesBlock(nonce, spec.results.max_files, spec.results.max_bytes)
        snapshot = FilesBlock(
            nonce, spec.results.snapshot_files, spec.results.snapshot_bytes, SNAPSHOT_PREFIX
        )
        program_ended: float | None = None
        decoder = FrameDecoder()
        timed_out = output_killed = installed_in_time = resumed = False
        stop_reading_at: float | None = None
        with stream:
            while not all(end.report is not None for end in ends.values()):
                now = time.monotonic()
                program_running = program_ended is None and (
                    installing is None or installing.report is not None
                )
                if stop_reading_at is None and now >= deadline and program_running and not resumed:
                    # The launcher should have stopped the program by now. The program (the same
                    # user) may have stopped the launcher with SIGSTOP: resume it once (the
                    # container's init passes SIGCONT on to it) and give it the same grace again.
                    resumed = True
                    _signal(container, "SIGCONT")
                    deadline = now + _LAUNCHER_GRACE_S
                elif stop_reading_at is None and now >= deadline:
                    timed_out = True
                    _signal(container, "SIGKILL")
                    stop_reading_at = now + _DRAIN_S
                if stop_reading_at is not None and now >= stop_reading_at:
                    break
                stream.settimeout(_TICK_S)
                try:
                    chunk = stream.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                for kind, data in decoder.feed(chunk):
                    if kind == STDOUT and installing is not None and installing.report is None:
                        data = installing.feed(data)
                        if installing.report is not None:
                            data += installing.rest
                            # A line that comes after a kill came too late: the install did not finish.
                            installed_in_time = stop_reading_at is None
                            program_started = time.monotonic()
                            deadline = program_started + program_deadline_s
                    if kind == STDOUT and not files.complete:
                        data = files.feed(data)
                        if files.manifest is not None and program_ended is None:
                            # The launcher sends files only once everything of the program is gone.
                            program_ended = time.monotonic()
                            if stop_reading_at is None:
                                deadline = max(deadline, program_ended + _FILES_GRACE_S)
                    if kind == STDOUT and spec.results.snapshot_files and not snapshot.complete:
                        data = snapshot.feed(data)
                    if kind in captures:
                        keep(kind, ends[kind].feed(data))
                seen = sum(capture.seen for capture in captures.values())
                if stop_reading_at is None and seen > limits.output_kill_kib * 1024:
                    output_killed = True
                    _signal(container, "SIGKILL")
                    stop_reading_at = time.monotonic() + _DRAIN_S
        finished.set()
        program_ran = installing is None or installed_in_time
        duration = (program_ended or time.monotonic()) - program_started if program_ran else 0.0
        keep(STDOUT, ends[STDOUT].feed(files.flush() + snapshot.flush()))
        for kind, end in ends.items():
            keep(kind, end.flush())
        report = _end_report(ends[STDOUT].report, ends[STDERR].report)
        exit_code: int | None
        return_value = None
        launcher_lost = report is None and not (timed_out or output_killed)
        if report is not None and not (timed_out or output_killed):
            exit_code, return_value = report.exit_code, report.return_value
            timed_out = report.timed_out
            oom_killed = report.oom_killed if report.oom_killed is not None else _final_state(container)[1]
        else:
            exit_code, oom_killed = _final_state(container)
            if exit_code == 137 and not (oom_killed or timed_out or output_killed):
                oom_killed = _oom_event_since(container, job_sent_at)
        install = None
        if spec.install is not None:
            assert installing is not None
            line = installing.report if installed_in_time else None
            install = _install_outcome(line, time.monotonic() - started, spec.install.timeout_s)
            if not install.finished or install.exit_code != 0:
                exit_code = None  # the program never ran
        out, err = captures[STDOUT], captures[STDERR]
        return Outcome(
            exit_code=exit_code,
            stdout=out.data,
            stderr=err.data,
            stdout_bytes=out.seen,
            stderr_bytes=err.seen,
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
            duration_s=round(duration, 3),
            timed_out=timed_out,
            oom_killed=oom_killed,
            output_killed=output_killed,
            install=install,
            files=_files_out(files),
            snapshot=_files_out(snapshot),
            return_value=return_value,
            launcher_lost=launcher_lost,
            launcher_resumed=resumed and report is not None and not timed_out,
            output_relayed=spec.relays_output,
        )

    def _remove(self, container: Container) -> None:
        """Force-remove; never raises (an engine that is gone cannot keep it anyway, and the
        next start-up reaps what is left)."""
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            if "already in progress" not in str(exc):
                logging.getLogger(__name__).warning("could not remove %s: %s", container.name, exc)


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
        writer.settimeout(_TICK_S)
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
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            container.kill(signal=signal)

    threading.Thread(target=send, daemon=True).start()


@dataclass(frozen=True)
class _EndReport:
    exit_code: int | None  # None: the program never ran
    oom_killed: bool | None  # None: no cgroup counter to read, ask Docker
    return_value: str | None
    timed_out: bool  # the launcher stopped the program at its time limit


def _end_report(stdout_line: bytes | None, stderr_line: bytes | None) -> _EndReport | None:
    """What the launcher's end-of-job line says, if both streams carried it."""
    if stdout_line is None or stdout_line != stderr_line:
        return None
    try:
        report = json.loads(stdout_line)
        code, oom_kills, value = report["exit_code"], report["oom_kills"], report.get("return_value")
        return _EndReport(
            exit_code=None if code is None else int(code),
            oom_killed=None if oom_kills is None else int(oom_kills) > 0,
            return_value=value if isinstance(value, str) else None,
            timed_out=report.get("timed_out") is True,
        )
    except (ValueError, KeyError, TypeError):
        return None


def _files_out(block: FilesBlock) -> FilesOut | None:
    if block.manifest is None or not block.complete:
        return None
    manifest = block.manifest
    return FilesOut(manifest["files"], manifest["omitted"], manifest["changed"], bytes(block.data))


def _install_outcome(line: bytes | None, elapsed_s: float, timeout_s: float) -> InstallOutcome:
    """The launcher's install report; without one, the install was stopped (for time, or with
    the container)."""
    if line is None:
        return InstallOutcome(False, None, round(elapsed_s, 3), "", timeout_s)
    try:
        report = json.loads(line)
        return InstallOutcome(
            True, int(report["exit_code"]), float(report["seconds"]), str(report["output"]), timeout_s
        )
    except (ValueError, KeyError, TypeError):
        return InstallOutcome(True, None, round(elapsed_s, 3), "unreadable install report", timeout_s)


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
    except (docker.errors.DockerException, requests.exceptions.RequestException):
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
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return False


def _process_alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    if os.name != "posix":  # os.kill(pid, 0) there sends a signal instead of asking: rely on age
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _image_missing(image: str) -> ImageMissing:
    profile = image.rpartition(":")[2]  # our images are tagged REPOSITORY:PROFILE
    return ImageMissing(
        f"the sandbox image {image} is not on the Docker engine; build it with "
        f"`agent-sandbox image build --profile {profile}`"
    )


def _engine_error(exc: BaseException) -> EngineError:
    """An engine that answered and refused is a different problem from one that is not there."""
    if isinstance(exc, docker.errors.APIError) and exc.response is not None:
        return EngineError(
            f"the Docker engine refused to run the sandbox container: {exc.explanation or exc}; "
            "check the limits in the configuration against this machine (agent-sandbox doctor)"
        )
    return EngineUnavailable(unreachable(exc))


def unreachable(exc: BaseException) -> str:
    """What to tell someone whose engine does not answer."""
    return (
        f"no Docker engine answers ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
        "start one with `scripts/ensure-engine.sh` (Debian, as root) or set DOCKER_HOST"
    )


async def _ignore(stage: str, detail: str = "") -> None:
    return None
