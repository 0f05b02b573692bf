"""What the engine is asked to run, and the raw facts it reports back. Pure data."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

from agent_sandbox.config import GVISOR
from agent_sandbox.models import ArtifactPreview, Limits


@dataclass(frozen=True)
class PackageMount:
    """A run's wheels, mounted read-only at /wheels, and the tmpfs /packages they install into
    (not noexec, unlike /work and /tmp: C extensions must load)."""

    wheels_dir: str
    packages_mib: int


@dataclass(frozen=True)
class InstallSpec:
    """Wheels to install before the program starts, and how long that may take."""

    mount: PackageMount
    wheels: tuple[str, ...]  # file names in mount.wheels_dir
    timeout_s: float


@dataclass(frozen=True)
class ResultCaps:
    """What the launcher sends back besides output: files it finds changed under /work (how many,
    how many bytes, how many left-out ones it lists) and, for a run as a notebook cell, the last
    expression's repr (at most ``return_value_chars``)."""

    max_files: int = 0
    max_bytes: int = 0
    max_listed: int = 0
    notebook: bool = False
    return_value_chars: int = 0  # 0: no return value
    snapshot_files: int = 0  # a workspace run: all of /work comes back too, within these caps
    snapshot_bytes: int = 0
    state_bytes: int = 0  # a notebook cell in a workspace: its global names come back, this big at most
    post_mortem: bool = True  # at the time limit, each Python process dumps its stacks before the kill


@dataclass(frozen=True)
class ContainerShape:
    """What a container is created with. Any job of the same shape may run in a warm container
    of it: everything else about a job (files, command, env, stdin, time and output limits)
    reaches the container only when the job starts."""

    image: str
    memory_mib: int
    cpus: float
    cpu_shares: int
    pids: int
    open_files: int
    file_size_mib: int
    work_mib: int
    tmp_mib: int
    shm_mib: int
    network: str = ""  # empty: no network at all
    packages: PackageMount | None = None  # a run's own, so such a container is never warm
    runtime: str = ""  # the OCI runtime (runsc: gVisor); empty: the engine's default

    @classmethod
    def of(
        cls,
        image: str,
        limits: Limits,
        network: str = "",
        packages: PackageMount | None = None,
        runtime: str = "",
    ) -> ContainerShape:
        return cls(
            image=image,
            network=network,
            runtime=runtime,
            packages=packages,
            memory_mib=limits.memory_mib,
            cpus=limits.cpus,
            cpu_shares=limits.cpu_shares,
            pids=limits.pids,
            open_files=limits.open_files,
            file_size_mib=limits.file_size_mib,
            work_mib=limits.work_mib,
            tmp_mib=limits.tmp_mib,
            shm_mib=limits.shm_mib,
        )


@dataclass(frozen=True)
class RunSpec:
    """One job: files (a tar), the program, its input and its limits."""

    image: str
    archive: bytes
    entrypoint: str
    args: tuple[str, ...]
    stdin: bytes | None
    env: dict[str, str]
    limits: Limits
    state: bytes = b""  # the workspace's Python state to restore (opaque: only the sandbox reads it)
    network: str = ""
    runtime: str = ""
    install: InstallSpec | None = None
    results: ResultCaps = field(default_factory=ResultCaps)
    relay: bool = False  # the engine asks for relayed output whatever the runtime (see below)

    @property
    def relays_output(self) -> bool:
        """Whether the launcher copies the program's output through pipes of its own: under
        gVisor, whose pipes return short writes that Python's unbuffered stdout drops, and where
        the engine asks (on Kubernetes, whose runtime class may be gVisor). Elsewhere the program
        writes straight into the container's pipes, so what it wrote is kept even if it kills the
        launcher."""
        return self.relay or self.runtime == GVISOR

    @property
    def shape(self) -> ContainerShape:
        mount = self.install.mount if self.install else None
        return ContainerShape.of(self.image, self.limits, self.network, mount, self.runtime)


@dataclass(frozen=True)
class InstallOutcome:
    """How installing the wheels went; ``finished`` is False when it was stopped for time."""

    finished: bool
    exit_code: int | None
    seconds: float
    output: str
    timeout_s: float


@dataclass(frozen=True)
class FileEntry:
    """A file the launcher sends back: its path under /work, its size, and for a Parquet file
    the launcher could read, a preview of its first rows."""

    path: str
    size: int
    preview: ArtifactPreview | None = None  # made by the launcher in the sandbox


# Why a file did not come back: over the caps, unreadable, or behind a folder not looked into.
OmittedKind = Literal["cap", "unreadable", "unreachable"]


@dataclass(frozen=True)
class OmittedFile:
    """A file (or folder) the launcher did not send back, and why."""

    path: str
    size: int
    reason: str
    kind: OmittedKind


@dataclass(frozen=True)
class FilesOut:
    """The files the launcher sent back: what its manifest listed, and their bytes in order.
    ``refused`` says why none were sent at all (all of /work was over a workspace's caps)."""

    files: list[FileEntry]
    omitted: list[OmittedFile]
    changed: int  # files the program created or changed, sent or not
    data: bytes
    refused: str | None = None

    def contents(self) -> list[tuple[str, bytes]]:
        """Each sent file's path and bytes."""
        found, offset = [], 0
        for entry in self.files:
            found.append((entry.path, self.data[offset : offset + entry.size]))
            offset += entry.size
        return found


@dataclass(frozen=True)
class Usage:
    """What the program used, as the launcher measured it. ``source`` says how: "cgroup" (the
    sandbox's cgroup: every process, and memory as its limit counts it, tmpfs files included) or
    "processes" (no cgroup files, as under gVisor: CPU of the program and of the children that
    were waited for, and the peak of the largest single one)."""

    peak_memory_bytes: int | None
    cpu_s: float | None
    wall_s: float | None  # from the program's start to its end (or kill), in the sandbox
    source: Literal["cgroup", "processes"] | None


@dataclass(frozen=True)
class Measured:
    """Limits the launcher saw reached, whatever the program printed: forks or threads the
    process limit refused (None: no counter, as under gVisor, where ``tasks_peak`` says how many
    processes and threads the sandbox was seen holding at once instead), filesystems that filled
    up, files left at the file-size limit, and the most files one process was seen holding open."""

    forks_refused: int | None = None
    full: tuple[str, ...] = ()
    at_file_size: tuple[str, ...] = ()
    open_files_peak: int | None = None
    tasks_peak: int | None = None

    def all_tasks_held(self, pids: int) -> bool:
        """Seen holding every process and thread it may (where no counter keeps refusals)."""
        return self.tasks_peak is not None and self.tasks_peak >= pids

    def open_files_held(self, open_files: int) -> bool:
        """A process was seen holding every file it may open."""
        return self.open_files_peak is not None and self.open_files_peak >= open_files

    def reached(self, limits: Limits) -> list[str]:
        """The kinds of limit (as ``ViolationKind`` values) these measurements show reached."""
        reached = {
            "processes": bool(self.forks_refused) or self.all_tasks_held(limits.pids),
            "disk": bool(self.full),
            "file_size": bool(self.at_file_size),
            "open_files": self.open_files_held(limits.open_files),
        }
        return [kind for kind, hit in reached.items() if hit]


@dataclass(frozen=True)
class ProcessDump:
    """The stacks of every thread of one Python process, as faulthandler wrote them."""

    pid: int
    program: bool  # the program itself, not a child of it
    text: str


@dataclass(frozen=True)
class PostMortem:
    """What the launcher asked of the program's processes at the time limit, before the kill:
    their dumps (empty: none answered) and the lines of code their frames under /work point at,
    keyed ``FILE:LINE``."""

    dumps: tuple[ProcessDump, ...]
    sources: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    """The raw facts of one run, before any judgement."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    stdout_bytes: int
    stderr_bytes: int
    stdout_truncated: bool
    stderr_truncated: bool
    duration_s: float
    timed_out: bool
    oom_killed: bool
    output_killed: bool
    warm_start: bool = False
    install: InstallOutcome | None = None
    files: FilesOut | None = None
    snapshot: FilesOut | None = None  # all of /work, for a workspace run
    state: FilesOut | None = None  # the runner's report and the Python state, for a stateful cell
    return_value: str | None = None
    # The launcher ended without its report (the program killed it, or the sandbox died whole):
    # no files came back, and output it was relaying (output_relayed) may be missing its end.
    launcher_lost: bool = False
    output_relayed: bool = False
    # The launcher reported only once the host had resumed it at the time limit (SIGCONT): the
    # program had likely stopped it (SIGSTOP), so duration_s includes that wait.
    launcher_resumed: bool = False
    # From the launcher's end report; None (or empty) where it did not report.
    usage: Usage | None = None
    measured: Measured = field(default_factory=Measured)
    oom_victim: Literal["program", "child"] | None = None
    post_mortem: PostMortem | None = None

    @functools.cached_property
    def stderr_text(self) -> str:
        """stderr as text (invalid UTF-8 replaced), decoded once for all who read it."""
        return self.stderr.decode("utf-8", errors="replace")
