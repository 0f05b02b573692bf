"""The data that crosses agent-sandbox's boundaries: what a caller asks for and what it gets."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Linux takes one argument or NAME=value string of at most 128 KiB with its NUL (MAX_ARG_STRLEN);
# all of them together must also fit beside the sandbox's own. Past these, exec fails (E2BIG).
MAX_ARG_BYTES = 128 * 1024 - 1
MAX_ARGS_AND_ENV_BYTES = 256 * 1024
# The sandbox sets these itself; letting a caller change them would break the run.
RESERVED_ENV = frozenset({"HOME", "PATH", "PYTHONUNBUFFERED", "PYTHONPATH", "PYTHONHOME"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectFile(_Model):
    """One file to place under /work before the program starts."""

    path: str = Field(description="Relative path under /work, with '/' separators, e.g. 'pkg/util.py'.")
    content: str = Field(description="The file's content: text, or base64 when encoding is 'base64'.")
    encoding: Literal["utf-8", "base64"] = Field(
        default="utf-8", description="'utf-8' for text, 'base64' for binary content."
    )


class LimitRequest(_Model):
    """Limits a caller may lower (or, for time, raise up to the configured maximum)."""

    timeout_s: float | None = Field(default=None, gt=0)
    memory_mib: int | None = Field(default=None, ge=32)
    cpus: float | None = Field(default=None, gt=0)
    pids: int | None = Field(default=None, ge=8)


class RunRequest(_Model):
    """A set of files, the one to run, and what to give it."""

    files: list[ProjectFile] = Field(min_length=1)
    entrypoint: str = "main.py"
    args: list[str] = Field(default_factory=list)
    stdin: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    limits: LimitRequest = Field(default_factory=LimitRequest)
    requirements: list[str] = Field(
        default_factory=list, description="Packages to install first, e.g. ['six', 'pandas>=2']."
    )
    profile: str | None = Field(default=None, description="Image profile; None: the server's default.")
    workspace: str | None = Field(
        default=None, description="Start from this workspace's files and save /work into it afterwards."
    )
    notebook: bool = Field(
        default=False,
        description="Run the entrypoint like a notebook cell: figures shown with plt.show() are "
        "saved as /work/figure_N.png (and so come back).",
    )
    return_last_expression: bool = Field(
        default=False, description="With notebook: a last expression's repr comes back as return_value."
    )
    background: bool = Field(
        default=False, description="A background run: its time limit may go up to max_background_timeout_s."
    )
    keep_state: bool | None = Field(
        default=None,
        description="A notebook cell in a workspace: restore the global names earlier cells kept, and "
        "keep this one's for the next. None: on for notebook cells in a workspace.",
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not ENV_NAME.fullmatch(name):
                raise ValueError(
                    f"environment variable name {name!r} is invalid: use letters, digits and "
                    "'_', not starting with a digit"
                )
            if name in RESERVED_ENV:
                raise ValueError(f"environment variable {name} is set by the sandbox; pick another")
            if "\0" in value:
                raise ValueError(f"environment variable {name} contains a NUL character")
        return env

    @field_validator("args")
    @classmethod
    def _args_without_nul(cls, args: list[str]) -> list[str]:
        for index, arg in enumerate(args):
            if "\0" in arg:
                raise ValueError(f"args[{index}] contains a NUL character")
        return args

    @model_validator(mode="after")
    def _args_and_env_fit(self) -> Self:
        """Refused here, before anything runs, rather than failing in the sandbox's exec."""
        strings = [(f"args[{index}]", arg) for index, arg in enumerate(self.args)]
        strings += [(f"env {name}", f"{name}={value}") for name, value in self.env.items()]
        total = 0
        for what, text in strings:
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > MAX_ARG_BYTES:
                raise ValueError(
                    f"{what} is {size} bytes, over the {MAX_ARG_BYTES} bytes Linux allows one "
                    "argument or NAME=value; pass large data as a file or on stdin"
                )
            total += size + 1
        if total > MAX_ARGS_AND_ENV_BYTES:
            raise ValueError(
                f"args and env add up to {total} bytes, over the {MAX_ARGS_AND_ENV_BYTES} bytes a "
                "program may be given; pass large data as a file or on stdin"
            )
        return self


class Limits(_Model):
    """The limits one run actually got."""

    timeout_s: float
    memory_mib: int
    cpus: float
    cpu_shares: int
    pids: int
    open_files: int
    file_size_mib: int
    work_mib: int
    tmp_mib: int
    shm_mib: int
    output_capture_kib: int
    output_kill_kib: int


class ViolationKind(StrEnum):
    """Which limit a program ran into."""

    TIMEOUT = "timeout"
    MEMORY = "memory"
    OUTPUT = "output"
    PROCESSES = "processes"
    DISK = "disk"
    FILE_SIZE = "file_size"
    OPEN_FILES = "open_files"


class Violation(_Model):
    """A limit the program hit, with the evidence in plain words."""

    kind: ViolationKind
    limit: str = Field(description="The limit in force, e.g. '1024 MiB' or '30 s'.")
    message: str


class InstallReport(_Model):
    """How a run's requirements were fetched on the host and installed in the sandbox."""

    requirements: list[str] = Field(description="What was asked for.")
    wheels: list[str] = Field(description="The wheels they resolved to, dependencies included.")
    from_cache: bool = Field(description="The host had resolved and downloaded them before.")
    resolve_s: float = Field(description="Host seconds to resolve and download (near 0 when cached).")
    install_s: float = Field(description="Sandbox seconds to install them into /packages.")
    ok: bool = Field(description="All installed; when false, the program did not run.")
    output: str = Field(description="The installer's own output (its end, when long).")
    auto: bool = Field(
        default=False,
        description="Added by the server after the program died on a missing module; the call was run again.",
    )
    added: list[str] = Field(default=[], description="With auto: the requirements the server added.")


class ErrorInfo(_Model):
    """The uncaught exception the program died on, from its traceback (which stays in stderr)."""

    type: str = Field(description="e.g. 'ZeroDivisionError'.")
    message: str
    file: str = Field(description="Where it was raised: the innermost frame in the program's own files.")
    line: int
    function: str | None = Field(default=None, description="The function it was raised in.")
    source: str | None = Field(default=None, description="That line of code, as the traceback shows it.")


class StoppedAt(_Model):
    """Where the program was when its time ran out, from the stacks every Python process of the
    run dumped just before the kill (never from its output): the innermost frame in the
    program's own files (under /work) of the process and thread most likely doing the work."""

    process: Literal["program", "child"] = Field(description="The program itself, or a process it started.")
    pid: int = Field(description="That process, as the sandbox numbers them.")
    file: str | None = Field(description="null when no frame of any process was in the program's files.")
    line: int | None
    function: str | None
    source: str | None = Field(description="That line of code, as the file held it at the end.")
    dump: str = Field(
        description="Every thread's stack of every process that answered (most recent call first), capped."
    )


class ArtifactPreview(_Model):
    """A Parquet file's first rows as CSV text, made in the sandbox for the run viewer (never for
    the model: see server/content.py)."""

    csv: str
    rows: int = Field(description="How many rows the file has.")


class Artifact(_Model):
    """A file under /work the program created or changed."""

    path: str = Field(description="Relative to /work.")
    size: int
    mime_type: str
    sha256: str | None = Field(description="Of the content; null when the file was left out.")
    content: str | None = Field(
        default=None, description="The text itself, for UTF-8 text files up to the inline cap."
    )
    omitted: str | None = Field(default=None, description="Why the file did not come back, if it did not.")
    data: bytes | None = Field(default=None, exclude=True, repr=False)  # raw bytes, never serialised
    # For the run viewer only, never serialised: a model reads no more for it (server/content.py).
    preview: ArtifactPreview | None = Field(default=None, exclude=True, repr=False)


class NameNote(_Model):
    """One global name of a notebook cell, and why it was not carried."""

    name: str
    why: str


class StateReport(_Model):
    """The Python state of a notebook cell in a workspace: what the next cell will find."""

    saved: bool = Field(description="This cell's names are now the workspace's Python state.")
    kept: list[str] = Field(default=[], description="Names the next cell starts with (modules included).")
    kept_count: int = Field(default=0, description="How many names that is (`kept` lists at most 500).")
    dropped: list[NameNote] = Field(default=[], description="This cell's names that could not be kept.")
    not_restored: list[NameNote] = Field(
        default=[],
        description="Names saved earlier that this cell could not restore (kept for a later run that "
        "can, unless this cell defined them anew).",
    )
    bytes: int = Field(default=0, description="Size of the kept state.")
    note: str | None = Field(default=None, description="Why it was not saved.")


class WorkspaceReport(_Model):
    """What a run did to its workspace."""

    id: str
    saved: bool = Field(description="/work at the end of the run is now the workspace's state.")
    files: int = Field(description="Files in the workspace now.")
    bytes: int = Field(description="Their total size.")
    note: str | None = Field(default=None, description="Why it was not saved, or what was left out.")


class RunResult(_Model):
    """Everything a caller needs to know about one run."""

    exit_code: int | None = Field(
        description="The program's exit code; 128+N when killed by signal N; null if it never ran."
    )
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    stdout_bytes: int = Field(description="Bytes the program wrote to stdout, kept or not.")
    stderr_bytes: int = Field(description="Bytes the program wrote to stderr, kept or not.")
    duration_s: float
    timed_out: bool
    oom_killed: bool
    peak_memory_mib: float | None = Field(
        default=None,
        description="The most memory the run held at once, in MiB (see usage_source); null when unknown.",
    )
    cpu_s: float | None = Field(
        default=None, description="CPU seconds used, user and system, by every process of the run."
    )
    usage_source: Literal["cgroup", "processes"] | None = Field(
        default=None,
        description="How usage was measured: 'cgroup' (the sandbox's kernel counters: every process, and "
        "memory as the limit counts it, files in /work and /tmp included) or 'processes' (under gVisor: "
        "CPU of the program and the children it waited for, peak memory of the largest single one).",
    )
    oom_victim: Literal["program", "child"] | None = Field(
        default=None, description="After a memory kill, which process the kernel killed, when known."
    )
    stopped_at: StoppedAt | None = Field(
        default=None, description="After a timeout: where the program was when it was stopped."
    )
    warm_start: bool = Field(description="The run used a container started ahead of time.")
    violations: list[Violation]
    notes: list[str] = Field(description="Plain sentences on what happened and what to change.")
    limits: Limits
    profile: str = Field(description="The image profile the run used.")
    install: InstallReport | None = Field(
        default=None, description="Present when the run had requirements: kept apart from its output."
    )
    return_value: str | None = Field(
        default=None, description="repr() of the snippet's last expression, as in a notebook cell."
    )
    error: ErrorInfo | None = Field(default=None, description="The uncaught exception, if it died on one.")
    artifacts: list[Artifact] = Field(
        default_factory=list, description="Files under /work the program created or changed."
    )
    workspace: WorkspaceReport | None = Field(default=None, description="For a run in a workspace.")
    state: StateReport | None = Field(
        default=None, description="For a run_python cell in a workspace that keeps its Python state."
    )

    @property
    def install_failed(self) -> bool:
        """Its requirements did not install, so the program never ran."""
        return self.install is not None and not self.install.ok


RunStateName = Literal["queued", "running", "finished", "failed", "cancelled", "lost"]


class RunStatus(_Model):
    """A background run as it stands: its state, the output so far, and what to do next."""

    run_id: str = Field(description="Pass it to run_status, run_result and run_cancel.")
    state: RunStateName = Field(
        description="queued, running; then finished (run_result has the result), failed (refused "
        "or the sandbox unavailable: see error), cancelled, or lost (the server stopped meanwhile)."
    )
    tool: str
    stage: str | None = Field(default=None, description="While in flight: e.g. 'queued, 2 ahead', 'running'.")
    elapsed_s: float = Field(description="Since it was started; until it ended, once it has.")
    timeout_s: float = Field(description="Its time limit, the program's own run.")
    stdout_tail: str = Field(description="The last lines the program wrote to stdout so far.")
    stderr_tail: str = Field(description="The last lines it wrote to stderr so far.")
    stdout_bytes: int = Field(description="Bytes written to stdout so far, shown or not.")
    stderr_bytes: int = Field(description="Bytes written to stderr so far, shown or not.")
    limits_hit: list[str] = Field(
        default_factory=list, description="Limits hit so far (as in violations); final in the result."
    )
    error: str | None = Field(default=None, description="Why it failed or was lost, when it was.")
    next: str = Field(description="What to call next.")


class RunAnswer(RootModel[RunResult | RunStatus]):
    """What run_python and run_project return: the result, or for a background run its status."""

    model_config = ConfigDict(json_schema_extra={"type": "object"})


class BatchItem(_Model):
    """One program of a ``run_batch``: a snippet (``code``, run as run_python runs it) or ``files``
    and an ``entrypoint`` (run as run_project runs them)."""

    code: str | None = Field(default=None, description="A Python snippet, run as run_python runs it.")
    files: list[ProjectFile] | None = Field(
        default=None, description="Or files to place under /work and run, as run_project does."
    )
    entrypoint: str = Field(default="main.py", description="With files: the file to run.")
    args: list[str] = Field(default_factory=list, description="With files: command-line arguments.")
    env: dict[str, str] = Field(default_factory=dict, description="With files: extra environment variables.")
    stdin: str | None = Field(default=None, description="Text given to the program on standard input.")
    timeout_s: float | None = Field(default=None, gt=0, description="Seconds before it is stopped.")
    requirements: list[str] = Field(default_factory=list, description="Packages to install first.")
    image: str | None = Field(default=None, description="Image profile; None: the server's default.")

    def request(self) -> RunRequest:
        """The run_python or run_project request it stands for; ``ValueError`` (a pydantic
        ``ValidationError`` too) says what is wrong with it."""
        if (self.code is None) == (self.files is None):
            raise ValueError("give either code (a snippet) or files (a project), not both or neither")
        with_files = sorted({"entrypoint", "args", "env"} & self.model_fields_set)
        if self.code is not None and with_files:
            raise ValueError(f"{', '.join(with_files)} go with files, not with code")
        snippet = [ProjectFile(path="main.py", content=self.code)] if self.code is not None else None
        return RunRequest(
            files=snippet or self.files or [],
            entrypoint=self.entrypoint,
            args=self.args,
            env=self.env,
            stdin=self.stdin,
            limits=LimitRequest(timeout_s=self.timeout_s),
            requirements=self.requirements,
            profile=self.image,
            notebook=snippet is not None,
            return_last_expression=snippet is not None,
        )


class BatchEntry(_Model):
    """One item's outcome, in the order sent: its result, or why it never ran."""

    index: int
    result: RunResult | None = None
    error: str | None = Field(default=None, description="Why this item never ran (refused, or no engine).")


class BatchResult(_Model):
    """What run_batch returns: one entry per item, in order, and the counts."""

    results: list[BatchEntry]
    passed: int = Field(description="Items that ran, exited 0 and hit no limit.")
    failed: int = Field(description="Items that ran and exited non-zero, hit a limit, or failed to install.")
    errors: int = Field(description="Items that never ran: refused, or the engine failed them.")
    limits_hit: dict[str, int] = Field(description="How many items hit each kind of limit.")
    summary: str
