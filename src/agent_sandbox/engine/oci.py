"""The OCI backend: one fresh hardened container per run, started by an OCI runtime (runc)
directly, with no container engine in the path.

Docker's own machinery (dockerd, containerd, a shim per container) costs about 190 ms of CPU per
container on a 2-core machine, several times what the container itself costs (docs/numbers.md):
this backend gives the same container without it. Docker still builds the images; the first run
of an image exports its file system once into a directory (``engine.oci_dir``), which every
container of it mounts read-only as its root.

A container is the runtime's ``run`` of a bundle whose ``config.json`` this module writes: the
options the Docker backend asks of Docker (``engine/docker.py``), as Docker hands them to runc
(namespaces, read-only root, tmpfs /work and /tmp, uid 1000, no capabilities, no-new-privileges,
Docker's default seccomp profile, the cgroup limits, rlimits, tini as init), so the sandbox is the
same; tests/integration/test_posture.py proves it. The launcher then waits for its job on stdin,
at once for a cold run, ahead of time for the warm pool; the runtime passes its pipes through, so
stdout and stderr come back apart with no framing. The container is kept after it exits
(``--keep``) only until its cgroup's memory-kill counter is read, then deleted with its bundle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import selectors
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import anyio
import anyio.to_thread

from agent_sandbox.config import EngineSettings
from agent_sandbox.engine.base import (
    ENGINE_CALL_THREADS,
    STDERR,
    STDOUT,
    EngineHealth,
    OutputCallback,
    ProgressCallback,
    RuntimeState,
    no_progress,
)
from agent_sandbox.engine.docker import (
    LABEL,
    OWNER_LABEL,
    PACKAGES_DIR,
    WHEELS_DIR,
    DockerEngine,
    docker_errors,
)
from agent_sandbox.engine.launch import (
    BASE_ENV,
    SANDBOX_UID,
    WORKDIR,
    file_size_rlimit,
    launcher_command,
    orphaned,
    owner_id,
    process_alive,
)
from agent_sandbox.engine.pool import WarmPool
from agent_sandbox.engine.session import TICK_S, JobSession, drive
from agent_sandbox.engine.spec import ContainerShape, Outcome, RunSpec
from agent_sandbox.errors import EngineError, EngineUnavailable

# The OCI runtime this backend drives. Not crun: its `run` has no --keep, so the cgroup (and its
# memory-kill counter) would be gone before the end is judged. gVisor runs through Docker.
RUNTIMES = ("runc",)
INIT = "/usr/bin/docker-init"  # tini, as Docker's --init mounts it (Debian's docker.io ships it)
CGROUP_PARENT = "agent-sandbox"
# Docker's default seccomp profile as Docker 20.10 hands it to runc for a container with no
# capabilities on x86-64 (Apache-2.0, github.com/moby/moby profiles/seccomp/default.json).
SECCOMP = json.loads((Path(__file__).parent / "oci_seccomp.json").read_text())
MOUNT_POINTS = ("work", "tmp", "dev/shm", WHEELS_DIR[1:], PACKAGES_DIR[1:])
_TMPFS_FLAGS = ["uid=1000", "gid=1000", "nosuid", "nodev"]
_BIND_FLAGS = ["rbind", "ro", "rprivate"]
_SYSCTL = {"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 2147483647"}
_KILL_WAIT_S = 10.0
_END_WAIT_S = 1.0  # for a container whose job was sent to end by itself, before it is killed
_START_TIMEOUT_S = 30.0
_START_POLL_S = 0.002
_SIGNALS = {"resume": "CONT", "kill": "KILL"}  # what the session asks for, as the runtime's kill names it

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedImage:
    """An image's file system, exported once, and the environment its image sets."""

    rootfs: Path
    env: tuple[str, ...]


def oci_config(shape: ContainerShape, image: PreparedImage, name: str, owner: str) -> dict[str, Any]:
    """The bundle's ``config.json`` for a container of ``shape``: what Docker writes for the
    Docker backend's options (``engine/docker.py:container_options``), nothing else."""
    memory = shape.memory_mib * 1024 * 1024
    file_size = file_size_rlimit(shape.file_size_mib)
    env = {**dict(line.split("=", 1) for line in image.env), **BASE_ENV, "HOSTNAME": name[-12:]}
    tmpfs = [(WORKDIR, shape.work_mib, "noexec"), ("/tmp", shape.tmp_mib, "noexec")]
    if shape.shm_mib:
        tmpfs.append(("/dev/shm", shape.shm_mib, "noexec"))
    binds = [("/sbin/docker-init", INIT)]
    if shape.packages is not None:
        tmpfs.append((PACKAGES_DIR, shape.packages.packages_mib, "exec"))
        binds.append((WHEELS_DIR, shape.packages.wheels_dir))
    return {
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": SANDBOX_UID, "gid": SANDBOX_UID, "additionalGids": [SANDBOX_UID]},
            "args": ["/sbin/docker-init", "--", *launcher_command(relay_output=False)],
            "env": [f"{key}={value}" for key, value in env.items()],
            "cwd": WORKDIR,
            "capabilities": {},
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": shape.open_files, "soft": shape.open_files},
                {"type": "RLIMIT_FSIZE", "hard": file_size, "soft": file_size},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
            ],
            "noNewPrivileges": True,
            "oomScoreAdj": 0,
        },
        "root": {"path": str(image.rootfs), "readonly": True},
        "hostname": name[-12:],
        "mounts": [
            _mount("/proc", "proc", "nosuid", "noexec", "nodev"),
            _mount("/dev", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
            _mount(
                "/dev/pts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"
            ),
            _mount("/sys", "sysfs", "nosuid", "noexec", "nodev", "ro"),
            _mount("/sys/fs/cgroup", "cgroup", "ro", "nosuid", "noexec", "nodev"),
            _mount("/dev/mqueue", "mqueue", "nosuid", "noexec", "nodev"),
            *(
                {"destination": where, "type": "bind", "source": source, "options": _BIND_FLAGS}
                for where, source in binds
            ),
            *(
                _mount(where, "tmpfs", "rprivate", f"size={mib}m", *_TMPFS_FLAGS, exec_flag)
                for where, mib, exec_flag in tmpfs
            ),
        ],
        "annotations": {"io.agent-sandbox.owner": owner},
        "linux": {
            "sysctl": _SYSCTL,
            "resources": {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    *(
                        {"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
                        for major, minor in ((1, 5), (1, 3), (1, 9), (1, 8), (5, 0), (5, 1))
                    ),
                    {"allow": False, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
                ],
                "memory": {"limit": memory, "swap": memory, "disableOOMKiller": False},
                "cpu": {"shares": shape.cpu_shares, "quota": int(shape.cpus * 100_000), "period": 100_000},
                "pids": {"limit": shape.pids},
            },
            "cgroupsPath": f"/{CGROUP_PARENT}/{name}",
            "namespaces": [{"type": kind} for kind in ("mount", "network", "uts", "pid", "ipc", "cgroup")],
            "seccomp": SECCOMP,
            "maskedPaths": [
                "/proc/asound",
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def _mount(destination: str, kind: str, *options: str) -> dict[str, Any]:
    return {"destination": destination, "type": kind, "source": kind, "options": list(options)}


@dataclass
class RunningContainer:
    """A container whose launcher waits for its one job on stdin, and the runtime's ``run``
    process that passes its pipes through and waits for its end."""

    name: str
    bundle: Path
    process: subprocess.Popen[bytes]
    shape: ContainerShape
    started_at: float = field(default_factory=time.monotonic)
    output_closed: bool = False  # every process in it has closed stdout and stderr: it is ending

    def looks_alive(self) -> bool:
        """An idle launcher writes nothing: output or an exit means it has ended."""
        if self.process.poll() is not None:
            return False
        selector = selectors.DefaultSelector()
        with selector:
            for stream in (self.process.stdout, self.process.stderr):
                assert stream is not None
                selector.register(stream, selectors.EVENT_READ)
            return not selector.select(0)


class OciEngine:
    """Runs ``RunSpec``s in fresh containers of an OCI runtime (see the module docstring); how many
    at once is ``Sandbox``'s admission's to decide. Needs root: it makes namespaces and cgroups."""

    def __init__(self, settings: EngineSettings, images: DockerEngine | None = None):
        self.settings = settings
        self.runtime = settings.runtime or RUNTIMES[0]
        self.name = f"the OCI runtime {self.runtime}"
        self.owner = owner_id()
        self.images = images or DockerEngine(settings)  # Docker builds and holds the images
        self.directory = Path(settings.oci_dir)
        self.state_root = Path(settings.oci_state_dir) / self.runtime
        self.bundles = Path(settings.oci_state_dir) / "bundles"
        self._prepared: dict[str, PreparedImage] = {}
        self._preparing = threading.Lock()
        self._watchers = anyio.CapacityLimiter(settings.max_concurrent_runs)
        self._calls = anyio.CapacityLimiter(ENGINE_CALL_THREADS)
        self.pool: WarmPool[RunningContainer] | None = None

    # -- images ------------------------------------------------------------------------------

    def prepare(self, image: str) -> PreparedImage:
        """``image``'s file system as a directory (exported from Docker the first time this image
        id is asked for; later calls and processes find it there)."""
        attrs = self.images.image_attrs(image)
        env = tuple(attrs.get("Config", {}).get("Env") or ())
        image_id = str(attrs["Id"]).removeprefix("sha256:")
        with self._preparing:
            if image_id in self._prepared:
                return self._prepared[image_id]
            rootfs = self.directory / image_id / "rootfs"
            if not rootfs.is_dir():
                log.info("exporting %s to %s (once per image)", image, rootfs)
                self._export(image, rootfs)
            prepared = PreparedImage(rootfs, env)
            self._prepared[image_id] = prepared
            return prepared

    def _export(self, image: str, rootfs: Path) -> None:
        """Unpack ``image``'s file system into ``rootfs``, with the mount points the containers
        need (a read-only root cannot get them later). Atomic: it is unpacked beside, then renamed;
        what a process that died while exporting left is removed first."""
        for stale in rootfs.parent.glob("rootfs.partial-*"):
            if not process_alive(stale.name.rpartition("-")[2]):
                shutil.rmtree(stale, ignore_errors=True)
        partial = rootfs.with_name(f"rootfs.partial-{os.getpid()}")
        partial.mkdir(parents=True)
        try:
            with docker_errors(starting=True):
                self._unpack(image, partial)
            for point in MOUNT_POINTS:
                (partial / point).mkdir(parents=True, exist_ok=True)
            (partial / "sbin").mkdir(exist_ok=True)
            (partial / "sbin" / "docker-init").touch()
            partial.rename(rootfs)
        except OSError:
            if not rootfs.is_dir():  # else another process exported it meanwhile
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def _unpack(self, image: str, into: Path) -> None:
        """``docker export`` of a container of ``image`` (labelled as ours, so a reaper removes it
        if this process dies meanwhile), piped into tar."""
        labels = {LABEL: "1", OWNER_LABEL: self.owner}
        client = self.images.client
        container = client.containers.create(
            image, command=["true"], entrypoint=[], network_disabled=True, labels=labels
        )
        try:
            unpack = subprocess.Popen(["tar", "-x", "-C", str(into)], stdin=subprocess.PIPE)
            assert unpack.stdin is not None
            with unpack.stdin:
                for chunk in container.export():
                    unpack.stdin.write(cast(bytes, chunk))  # docker-py's stubs say str
            if unpack.wait() != 0:
                raise EngineError(f"could not unpack {image} into {into} (tar: {unpack.returncode})")
        finally:
            container.remove(force=True)

    # -- the Engine interface ----------------------------------------------------------------

    def health(self, images: Sequence[str], runtime: str) -> EngineHealth:
        """Docker's answer about the images, this runtime's version, and what keeps runs from
        starting here (not root, no runtime, no init)."""
        docker_health = self.images.health(images, "")
        offered = tuple(name for name in RUNTIMES if shutil.which(name))
        problems = list(docker_health.problems)
        wanted = runtime or RUNTIMES[0]
        if wanted not in offered:
            found = ", ".join(offered) or "none"
            problems.append(
                EngineUnavailable(
                    f"engine.runtime is {wanted!r}, which is not installed here (found: {found}); install "
                    f"it (apt-get install {wanted}) or set engine.runtime to one of {', '.join(RUNTIMES)}"
                )
            )
        if os.geteuid() != 0:
            problems.append(
                EngineUnavailable(
                    "engine.backend is oci, which makes namespaces and cgroups itself and so needs root; "
                    'run the server as root or use engine.backend = "docker"'
                )
            )
        if not Path(INIT).exists():
            problems.append(EngineUnavailable(f"no {INIT} (tini, the init): apt-get install docker.io"))
        version = _version(wanted) if wanted in offered else None
        state = RuntimeState(
            used=wanted,
            default=RUNTIMES[0],
            offered=offered,
            details=f"cgroup v{2 if Path('/sys/fs/cgroup/cgroup.controllers').exists() else 1}; "
            "security: seccomp (Docker's default profile)",
            fix=f"apt-get install {wanted}",
        )
        return EngineHealth(
            f"{wanted} {version or '?'} (images from {docker_health.description})",
            docker_health.version and version,
            state,
            docker_health.images,
            problems,
        )

    def reap(self, older_than_s: float) -> int:
        """Remove containers no live process will remove: those of a process of this host that
        has ended, and any older than ``older_than_s``; how many."""
        removed = self.images.reap(older_than_s)  # an export's container a dead process left
        now = time.time()
        for bundle in self._bundles():
            owner = _owner_of(bundle)
            if owner == self.owner:
                continue
            if orphaned(owner, self.owner) or now - bundle.stat().st_mtime > older_than_s:
                self._delete(bundle.name, bundle)
                removed += 1
        return removed

    def close(self) -> int:
        """Remove every container this process still has; how many."""
        mine = self.containers_of(self.owner)
        for name in mine:
            self._delete(name, self.bundles / name)
        return len(mine)

    def containers_of(self, owner: str) -> list[str]:
        """The names of the containers ``owner`` (an ``owner_id``) made that still exist."""
        return [bundle.name for bundle in self._bundles() if _owner_of(bundle) == owner]

    @contextlib.asynccontextmanager
    async def warm(
        self, shape: ContainerShape, size: int, max_idle_s: float, max_size: int = 0
    ) -> AsyncIterator[WarmPool[RunningContainer]]:
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
        the container, whatever happens (cancellation too)."""
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
                self.pool.dispose(started)
            else:
                await self.remove(started)

    async def start_sandbox(self, shape: ContainerShape) -> RunningContainer:
        """Write a bundle for ``shape`` and start the runtime on it; the launcher then waits."""
        with anyio.CancelScope(shield=True):  # a cancelled start must still leave us the bundle
            started = await anyio.to_thread.run_sync(self._start, shape, limiter=self._calls)
        return started  # noqa: RET504 (returned inside the scope, mypy sees a missing return)

    async def remove(self, started: RunningContainer) -> None:
        """Kill and delete a container and its bundle, shielded from cancellation."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._remove, started, limiter=self._calls)

    # -- one container -----------------------------------------------------------------------

    def _start(self, shape: ContainerShape) -> RunningContainer:
        image = self.prepare(shape.image)
        name = f"agent-sandbox-{secrets.token_hex(6)}"
        bundle = self.bundles / name
        bundle.mkdir(parents=True, mode=0o700)
        (bundle / "config.json").write_text(json.dumps(oci_config(shape, image, name, self.owner)))
        pid_file = bundle / "init.pid"
        command = [*self._runtime(), "run", "--keep", "--pid-file", str(pid_file), "--bundle", str(bundle)]
        try:
            process = subprocess.Popen(
                [*command, name],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a signal to the server's group is not one to the sandbox
            )
        except OSError as exc:
            shutil.rmtree(bundle, ignore_errors=True)
            raise EngineUnavailable(f"cannot run {self.runtime}: {exc}") from None
        started = RunningContainer(name, bundle, process, shape)
        # The runtime writes the pid file once the container exists: until then, what it writes
        # to stderr is its own complaint, not the program's.
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not pid_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                assert process.stderr is not None
                ended = process.poll() is not None
                said = process.stderr.read().decode(errors="replace").strip() if ended else ""
                self._remove(started)
                raise EngineError(
                    f"{self.runtime} could not start the sandbox ({said or 'not within 30 s'}); check "
                    "the limits in the configuration against this machine (agent-sandbox doctor)"
                )
            time.sleep(_START_POLL_S)
        return started

    def _watch(self, started: RunningContainer, spec: RunSpec, on_output: OutputCallback | None) -> Outcome:
        """Pump the job in and the output out (engine/session.py's ``drive``), signalling as the
        session says; where the launcher could not report, the exit status and the cgroup's
        memory-kill counter say how the container ended."""
        process = started.process
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        session = JobSession(spec, on_output)
        threading.Thread(target=_feed, args=(process.stdin, session.payload), daemon=True).start()
        selector = selectors.DefaultSelector()
        streams = {process.stdout.fileno(): STDOUT, process.stderr.fileno(): STDERR}
        for fd in streams:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)

        def receive() -> list[tuple[int, bytes]] | None:
            if not streams:
                started.output_closed = True
                return None
            chunks = []
            for key, _ in selector.select(TICK_S):
                fd = int(key.fd)
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if data:
                    chunks.append((streams[fd], data))
                else:
                    selector.unregister(fd)
                    del streams[fd]
            return chunks

        with selector:
            drive(session, receive, lambda due: self._signal(started.name, _SIGNALS[due]))

        def final_state(look_for_oom: bool) -> tuple[int | None, bool]:
            try:
                code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                return None, False
            return (code if code >= 0 else 128 - code), _oom_kills(started.name) > 0

        return session.outcome(final_state)

    def _signal(self, name: str, signal: str) -> None:
        """Send ``signal`` to the container's init (tini passes it on to the launcher; KILL ends the
        container) without waiting: the caller goes on reading the output meanwhile."""

        def send() -> None:
            subprocess.run([*self._runtime(), "kill", name, signal], capture_output=True, check=False)

        threading.Thread(target=send, daemon=True).start()

    def _remove(self, started: RunningContainer) -> None:
        """Kill (unless it ends by itself: a launcher that has reported ends at once), reap and
        delete; never raises (the next start-up reaps what is left)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            started.process.wait(timeout=_END_WAIT_S if started.output_closed else 0)
        if started.process.poll() is None:
            subprocess.run([*self._runtime(), "kill", started.name, "KILL"], capture_output=True, check=False)
            try:
                started.process.wait(timeout=_KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                started.process.kill()
                started.process.wait()
        for stream in (started.process.stdin, started.process.stdout, started.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._delete(started.name, started.bundle)

    def _delete(self, name: str, bundle: Path) -> None:
        deleted = subprocess.run([*self._runtime(), "delete", "--force", name], capture_output=True)
        if deleted.returncode != 0 and b"not exist" not in deleted.stderr:
            log.warning("could not delete %s: %s", name, deleted.stderr.decode(errors="replace").strip())
        shutil.rmtree(bundle, ignore_errors=True)

    def _runtime(self) -> list[str]:
        return [self.runtime, "--root", str(self.state_root)]

    def _bundles(self) -> list[Path]:
        try:
            return [path for path in self.bundles.iterdir() if path.is_dir()]
        except FileNotFoundError:
            return []


def _feed(stdin: IO[bytes], payload: bytes) -> None:
    """Write the job, the files and stdin, then close so the program sees end of input. The
    container may end first (OSError), or be removed meanwhile, closing the pipe (ValueError)."""
    with contextlib.suppress(OSError, ValueError), stdin:
        stdin.write(payload)


def _oom_kills(name: str) -> int:
    """How many processes the kernel killed for memory in the container's cgroup (read before the
    container is deleted, which removes the cgroup)."""
    path = Path("/sys/fs/cgroup/memory", CGROUP_PARENT, name, "memory.oom_control")
    if not path.exists():
        path = Path("/sys/fs/cgroup", CGROUP_PARENT, name, "memory.events")
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _owner_of(bundle: Path) -> str:
    try:
        config = json.loads((bundle / "config.json").read_text())
        return str(config["annotations"]["io.agent-sandbox.owner"])
    except (OSError, ValueError, KeyError):
        return ""


def _version(runtime: str) -> str | None:
    try:
        found = subprocess.run([runtime, "--version"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.split("\n")[0].split()[-1] if found.stdout else None
