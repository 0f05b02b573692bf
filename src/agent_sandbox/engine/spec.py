"""What the engine is asked to run, and the raw facts it reports back. Pure data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from agent_sandbox.config import GVISOR
from agent_sandbox.models import Limits


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


NOTEBOOK_RUNNER = (Path(__file__).parent / "notebook.py").read_text()


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
    network: str = ""
    runtime: str = ""
    install: InstallSpec | None = None
    results: ResultCaps = field(default_factory=ResultCaps)

    @property
    def relays_output(self) -> bool:
        """Whether the launcher copies the program's output through pipes of its own: under
        gVisor, whose pipes return short writes that Python's unbuffered stdout drops. Elsewhere
        the program writes straight into the container's pipes, so what it wrote is kept even if
        it kills the launcher."""
        return self.runtime == GVISOR

    @property
    def shape(self) -> ContainerShape:
        mount = self.install.mount if self.install else None
        return ContainerShape.of(self.image, self.limits, self.network, mount, self.runtime)

    def header(self, nonce: str, install_nonce: str = "") -> bytes:
        """What the launcher reads first: the job's size and the job (how many tar bytes follow,
        what to run, and the secrets that mark the launcher's end-of-job and install lines)."""
        job = {
            "archive_bytes": len(self.archive),
            "entrypoint": self.entrypoint,
            "args": list(self.args),
            "env": self.env,
            "wheels": list(self.install.wheels) if self.install else [],
            "notebook": (
                {"runner": NOTEBOOK_RUNNER, "max_chars": self.results.return_value_chars}
                if self.results.notebook
                else {}
            ),
            "artifacts": {
                "max_files": self.results.max_files,
                "max_bytes": self.results.max_bytes,
                "max_listed": self.results.max_listed,
            },
            "snapshot": (
                {"max_files": self.results.snapshot_files, "max_bytes": self.results.snapshot_bytes}
                if self.results.snapshot_files
                else {}
            ),
            "timeout_s": self.limits.timeout_s,
            "relay_output": self.relays_output,
            "nonce": nonce,
            "install_nonce": install_nonce,
        }
        encoded = json.dumps(job).encode()
        return b"%d\n" % len(encoded) + encoded


@dataclass(frozen=True)
class InstallOutcome:
    """How installing the wheels went; ``finished`` is False when it was stopped for time."""

    finished: bool
    exit_code: int | None
    seconds: float
    output: str
    timeout_s: float


@dataclass(frozen=True)
class FilesOut:
    """The files the launcher sent back: its manifest, and their bytes in manifest order."""

    files: list[dict[str, object]]  # {"path", "size"}
    omitted: list[dict[str, object]]  # {"path", "size", "reason"}
    changed: int  # files the program created or changed, sent or not
    data: bytes

    def contents(self) -> list[tuple[str, bytes]]:
        """Each sent file's path and bytes."""
        found, offset = [], 0
        for entry in self.files:
            size = int(str(entry["size"]))
            found.append((str(entry["path"]), self.data[offset : offset + size]))
            offset += size
        return found


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
    return_value: str | None = None
    # The launcher ended without its report (the program killed it, or the sandbox died whole):
    # no files came back, and output it was relaying (output_relayed) may be missing its end.
    launcher_lost: bool = False
    output_relayed: bool = False
    # The launcher reported only once the host had resumed it at the time limit (SIGCONT): the
    # program had likely stopped it (SIGSTOP), so duration_s includes that wait.
    launcher_resumed: bool = False
