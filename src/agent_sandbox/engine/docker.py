"""The only code that talks to Docker: one fresh hardened container per run, destroyed after.

A run creates the container, attaches to its stdin/stdout/stderr, starts it, streams
``<size>\\n`` + the tar + the caller's stdin into it (the launcher unpacks the files under the
tmpfs /work, then execs the program), reads both output streams until the program ends or is
killed for time or output, reads ``State.OOMKilled``, and removes the container on every path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import LogConfig, Ulimit

from agent_sandbox.config import EngineSettings
from agent_sandbox.engine.spec import Outcome, RunSpec
from agent_sandbox.engine.streams import STDERR, STDOUT, Capture, FrameDecoder

LABEL = "io.agent-sandbox"
OWNER_LABEL = "io.agent-sandbox.owner"
SANDBOX_USER = "1000:1000"
WORKDIR = "/work"
LAUNCHER = (Path(__file__).parent / "launcher.py").read_text()
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": WORKDIR,
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",  # output printed before a kill must not die in a buffer
    "PYTHONDONTWRITEBYTECODE": "1",
}
_TICK_S = 0.1
_DRAIN_S = 2.0

ProgressCallback = Callable[[str], Awaitable[None]]


class EngineError(Exception):
    """The sandbox could not run the program; the message says what to fix."""


class EngineUnavailable(EngineError):
    """No Docker engine answers."""


class ImageMissing(EngineError):
    """The sandbox image is not on the engine."""


class EngineBusy(EngineError):
    """Every run slot and every queue place is taken."""


def owner_id() -> str:
    """Identifies this process in container labels, to tell our leftovers from live runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def container_options(spec: RunSpec, owner: str) -> dict[str, Any]:
    """The hardened ``containers.create`` arguments for ``spec``."""
    limits = spec.limits
    tmpfs_flags = "uid=1000,gid=1000,noexec,nosuid,nodev"
    memory = limits.memory_mib * 1024 * 1024
    file_size = limits.file_size_mib * 1024 * 1024
    return {
        "image": spec.image,
        "name": f"agent-sandbox-{secrets.token_hex(6)}",
        "command": ["python3", "-I", "-S", "-c", LAUNCHER, spec.entrypoint, *spec.args],
        "entrypoint": [],
        "working_dir": WORKDIR,
        "user": SANDBOX_USER,
        "environment": {**BASE_ENV, **spec.env},
        "labels": {LABEL: "1", OWNER_LABEL: owner},
        "stdin_open": True,  # docker-py then sets StdinOnce: stdin closes when we half-close
        "tty": False,
        "network_disabled": True,
        "read_only": True,
        "tmpfs": {
            WORKDIR: f"size={limits.work_mib}m,{tmpfs_flags}",
            "/tmp": f"size={limits.tmp_mib}m,{tmpfs_flags}",
        },
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": limits.pids,
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(limits.cpus * 1e9),
        "cpu_shares": limits.cpu_shares,
        "ulimits": [
            Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
            Ulimit(name="fsize", soft=file_size, hard=file_size),
            Ulimit(name="core", soft=0, hard=0),
        ],
        "ipc_mode": "none",
        "init": True,
        "cgroupns": "private",
        "log_config": LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
    }


class DockerEngine:
    """Runs ``RunSpec``s in fresh containers, at most ``max_concurrent_runs`` at once."""

    def __init__(self, settings: EngineSettings, client: docker.DockerClient | None = None):
        self.settings = settings
        self.owner = owner_id()
        self._client = client
        self._slots = anyio.Semaphore(settings.max_concurrent_runs)
        self._waiting = 0

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
                raise EngineUnavailable(_unreachable(exc)) from None
        return self._client

    def check(self, image: str | None = None) -> str:
        """Fail with a fix unless the engine answers and ``image`` is present; returns its version."""
        image = image or self.settings.image
        try:
            version = str(self.client.version().get("Version", "?"))
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise ImageMissing(
                f"the sandbox image {image} is not on the Docker engine; "
                "build it with `agent-sandbox image build`"
            ) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineUnavailable(_unreachable(exc)) from None
        return version

    def remove_leftovers(self) -> int:
        """Remove our containers whose owning process is gone; returns how many."""
        host = socket.gethostname()
        removed = 0
        for container in self.client.containers.list(all=True, filters={"label": LABEL}):
            owner = container.labels.get(OWNER_LABEL, "")
            owner_host, _, pid = owner.rpartition(":")
            if owner == self.owner or (owner_host == host and _process_alive(pid)):
                continue
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
                removed += 1
        return removed

    def our_containers(self) -> list[Container]:
        """Containers this process created that still exist."""
        return list(self.client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={self.owner}"}))

    async def run(self, spec: RunSpec, on_progress: ProgressCallback | None = None) -> Outcome:
        """Run ``spec`` in a new container and remove it, whatever happens (cancellation too)."""
        report = on_progress or _ignore
        async with self._slot(report):
            await report("starting")
            with anyio.CancelScope(shield=True):  # a cancelled create must still hand us the id
                container = await anyio.to_thread.run_sync(self._create, spec)
            try:
                stream = await anyio.to_thread.run_sync(self._attach_and_start, container)
                await report("running")
                return await anyio.to_thread.run_sync(
                    self._watch, container, stream, spec, abandon_on_cancel=True
                )
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._remove, container)

    @contextlib.asynccontextmanager
    async def _slot(self, report: ProgressCallback) -> AsyncIterator[None]:
        if self._slots.value == 0:
            if self._waiting >= self.settings.max_queued_runs:
                raise EngineBusy(
                    f"the sandbox is busy: {self.settings.max_concurrent_runs} runs are in progress "
                    f"and {self._waiting} are queued; try again in a few seconds"
                )
            await report("queued")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()

    def _create(self, spec: RunSpec) -> Container:
        try:
            return self.client.containers.create(**container_options(spec, self.owner))
        except docker.errors.ImageNotFound:
            raise ImageMissing(
                f"the sandbox image {spec.image} is not on the Docker engine; "
                "build it with `agent-sandbox image build`"
            ) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineUnavailable(_unreachable(exc)) from None

    def _attach_and_start(self, container: Container) -> _Attachment:
        attached = self.client.api.attach_socket(
            container.name or "", params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        )
        container.start()
        return _Attachment(attached)

    def _watch(self, container: Container, attachment: _Attachment, spec: RunSpec) -> Outcome:
        stream = attachment.sock
        limits = spec.limits
        started = time.monotonic()
        deadline = started + limits.timeout_s
        payload = f"{len(spec.archive)}\n".encode() + spec.archive + (spec.stdin or b"")
        threading.Thread(target=_feed, args=(stream, payload), daemon=True).start()

        cap = limits.output_capture_kib * 1024
        out, err = Capture(cap), Capture(cap)
        decoder = FrameDecoder()
        timed_out = output_killed = False
        stop_reading_at: float | None = None
        with stream:
            while True:
                now = time.monotonic()
                if stop_reading_at is None and now >= deadline:
                    timed_out = True
                    _kill(container)
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
                    if kind == STDOUT:
                        out.add(data)
                    elif kind == STDERR:
                        err.add(data)
                if stop_reading_at is None and out.seen + err.seen > limits.output_kill_kib * 1024:
                    output_killed = True
                    _kill(container)
                    stop_reading_at = time.monotonic() + _DRAIN_S
        duration = time.monotonic() - started
        exit_code, oom_killed = _final_state(container)
        return Outcome(
            exit_code=exit_code,
            stdout=out.data,
            stderr=err.data,
            stdout_bytes=out.seen,
            stderr_bytes=err.seen,
            duration_s=round(duration, 3),
            timed_out=timed_out,
            oom_killed=oom_killed,
            output_killed=output_killed,
        )

    def _remove(self, container: Container | None) -> None:
        if container is None:
            return
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                logging.getLogger(__name__).warning("could not remove %s: %s", container.name, exc)


class _Attachment:
    """The attach connection: docker-py's wrapper (kept alive) and the socket under it."""

    def __init__(self, wrapper: Any):
        self.wrapper = wrapper
        # We need the socket itself for read timeouts and the half-close that ends stdin.
        self.sock: socket.socket = getattr(wrapper, "_sock", wrapper)


def _feed(stream: socket.socket, payload: bytes) -> None:
    """Write the files and stdin, then half-close so the program sees end of input."""
    try:
        stream.sendall(payload)
        stream.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the program ended (or was killed) before reading all its input


def _kill(container: Container) -> None:
    """SIGKILL the container without waiting: the engine only finishes a kill once the output
    it holds is delivered, so the caller must go on reading the stream meanwhile."""

    def kill() -> None:
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            container.kill()

    threading.Thread(target=kill, daemon=True).start()


def _final_state(container: Container) -> tuple[int | None, bool]:
    """Exit code and Docker's OOMKilled flag (read even on exit 0: a child may have been killed)."""
    try:
        status = container.wait(timeout=30)
        container.reload()
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None, False
    state = container.attrs.get("State", {})
    exit_code = status.get("StatusCode", state.get("ExitCode"))
    return (int(exit_code) if exit_code is not None else None), bool(state.get("OOMKilled"))


def _process_alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unreachable(exc: BaseException) -> str:
    return (
        f"no Docker engine answers ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
        "start one with `scripts/ensure-engine.sh` (Debian, as root) or set DOCKER_HOST"
    )


async def _ignore(_: str) -> None:
    return None
