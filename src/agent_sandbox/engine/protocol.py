"""The host's side of the launcher protocol; ``engine/launcher.py`` is the other side, in the
sandbox. Any engine that can carry bytes to a process's stdin and back from its stdout and stderr
can run a job with it (``engine/session.py`` does the talking).

To the launcher, on its stdin: the job's size in decimal and a newline, the ``Job`` as JSON, a
tar of exactly ``archive_bytes`` bytes, then exactly ``stdin_bytes`` of the caller's stdin and
``state_bytes`` of a workspace's Python state (framed, so no engine has to close the launcher's
stdin to end the program's).

From the launcher, each line marked with a prefix and the host's secret nonce for this job, so
that program output can never pass for one:

- the install line, on stdout before the program starts (runs with wheels): ``InstallDone``;
- the files block, on stdout once everything of the program's is gone: a manifest line, then
  exactly the bytes it promises (``FilesBlock``); a workspace run has a second one, the snapshot,
  and a workspace cell that keeps its Python state a third: the runner's report and the state;
- the end line, on stdout and stderr: ``EndOfJob``. Within one stream the program's bytes all
  come before it, so once both streams have shown it, all of the program's output is in.

``tests/unit/test_protocol.py`` proves the launcher's copies of the prefixes and of the job's
keys equal these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args

from agent_sandbox.engine.launch import NOTEBOOK_RUNNER, file_size_rlimit
from agent_sandbox.engine.spec import (
    FileEntry,
    FilesOut,
    InstallOutcome,
    Measured,
    OmittedFile,
    OmittedKind,
    PostMortem,
    ProcessDump,
    RunSpec,
    Usage,
)
from agent_sandbox.filenames import shown_name
from agent_sandbox.models import ArtifactPreview

END_PREFIX = b"\x00agent-sandbox-end "
INSTALLED_PREFIX = b"\x00agent-sandbox-installed "
FILES_PREFIX = b"\x00agent-sandbox-files "
SNAPSHOT_PREFIX = b"\x00agent-sandbox-snapshot "
STATE_PREFIX = b"\x00agent-sandbox-state "
MEASURED_PREFIX = b"\x00agent-sandbox-measured "
OMITTED_KINDS: frozenset[str] = frozenset(get_args(OmittedKind))
NOTEBOOK_STATE = (Path(__file__).parent / "notebook_state.py").read_text()
STATE_REPORT, STATE_DATA = "report", "state"  # the state block's two parts
STATE_REPORT_BYTES = 1 << 16  # the most the runner's report line may be (the launcher's REPORT_BYTES)
# The launcher's Parquet previews: at most this many files, this many bytes of CSV each, made
# within this many seconds in all (after the program ended, before the files block: the host's
# deadline for the program allows for it).
MAX_PREVIEWS = 4
PREVIEW_BYTES = 65536
PREVIEW_WAIT_S = 5.0


class StateJob(TypedDict):
    code: str  # notebook_state.py's source, run by the runner in the sandbox
    max_bytes: int  # the most state it may send back


class NotebookJob(TypedDict):
    runner: str  # the notebook runner's source
    max_chars: int  # of the last expression's repr; 0: report none
    state: StateJob | None  # keep the cell's global names in the workspace


class FileCaps(TypedDict):
    max_files: int
    max_bytes: int


class ArtifactCaps(FileCaps):
    max_listed: int  # left-out files listed at most


class Rlimits(TypedDict):
    """The program's resource limits (setrlimit), soft and hard alike."""

    nofile: int
    fsize: int  # bytes: one over the limit (see launch.file_size_rlimit)
    core: int


class Job(TypedDict):
    """What the launcher is told to do."""

    archive_bytes: int
    stdin_bytes: int  # the caller's stdin that follows the tar
    state_bytes: int  # a workspace's Python state that follows the stdin, for the notebook runner
    entrypoint: str
    args: list[str]
    env: dict[str, str]
    rlimits: Rlimits
    wheels: list[str]  # file names under /wheels, to install into /packages first
    notebook: NotebookJob | None  # run the entrypoint through the notebook runner
    artifacts: ArtifactCaps
    snapshot: FileCaps | None  # a workspace run: all of /work comes back too
    timeout_s: float
    relay_output: bool
    post_mortem: bool  # dump every Python process's stacks before a kill at the time limit
    nonce: str
    install_nonce: str
    # Marks the measured-so-far lines, written while the program runs: it can read them (its
    # stderr is theirs), so they carry a nonce of their own and are only ever advice.
    measured_nonce: str


class PreviewLine(TypedDict):
    """A Parquet file's first rows as CSV, which the launcher had pyarrow write in the sandbox."""

    csv: str
    rows: int  # the file's rows, all of them


class ManifestEntry(TypedDict):
    path: str
    size: int
    preview: PreviewLine | None  # a Parquet file's, in the files block only


class OmittedEntry(TypedDict):
    path: str
    size: int
    reason: str
    kind: str  # one of OMITTED_KINDS


class Manifest(TypedDict):
    """A files block's first line: the files that follow, in order, and those left out."""

    files: list[ManifestEntry]
    omitted: list[OmittedEntry]
    changed: int  # files the program created or changed, sent or not
    refused: str | None  # why no file at all was sent


class InstallLine(TypedDict):
    """How installing the wheels went."""

    exit_code: int
    seconds: float
    output: str


class UsageLine(TypedDict):
    peak_memory_bytes: int | None
    cpu_s: float | None
    wall_s: float | None
    source: str | None  # "cgroup" or "processes"


class MeasuredLine(TypedDict):
    forks_refused: int | None
    full: list[str]
    at_file_size: list[str]
    open_files_peak: int | None
    tasks_peak: int | None  # counted only where no counter keeps refused forks


class SoFarLine(MeasuredLine):
    """What the launcher has measured while the program runs (on stderr, each time it changes)."""

    oom_kills: int | None  # memory kills since the program started (a child's, while it lives on)


class Dump(TypedDict):
    pid: int
    program: bool
    text: str


class PostMortemLine(TypedDict):
    dumps: list[Dump]
    sources: dict[str, str]


class EndLine(TypedDict):
    """How the program ended."""

    exit_code: int | None  # None: it never ran
    oom_kills: int | None  # processes the kernel killed for memory; None: no counter
    timed_out: bool
    return_value: str | None
    usage: UsageLine
    measured: MeasuredLine
    oom_victim: str | None  # "program" or "child"
    post_mortem: PostMortemLine | None  # None: no kill at the time limit, or not asked for


def job_header(spec: RunSpec, nonce: str, install_nonce: str = "", measured_nonce: str = "") -> bytes:
    """What the launcher reads first: the job's size, then the job."""
    results = spec.results
    job: Job = {
        "archive_bytes": len(spec.archive),
        "stdin_bytes": len(spec.stdin or b""),
        "state_bytes": len(spec.state),
        "entrypoint": spec.entrypoint,
        "args": list(spec.args),
        "env": spec.env,
        "rlimits": {
            "nofile": spec.limits.open_files,
            "fsize": file_size_rlimit(spec.limits.file_size_mib),
            "core": 0,
        },
        "wheels": list(spec.install.wheels) if spec.install else [],
        "notebook": (
            {
                "runner": NOTEBOOK_RUNNER,
                "max_chars": results.return_value_chars,
                "state": (
                    {"code": NOTEBOOK_STATE, "max_bytes": results.state_bytes}
                    if results.state_bytes
                    else None
                ),
            }
            if results.notebook
            else None
        ),
        "artifacts": {
            "max_files": results.max_files,
            "max_bytes": results.max_bytes,
            "max_listed": results.max_listed,
        },
        "snapshot": (
            {"max_files": results.snapshot_files, "max_bytes": results.snapshot_bytes}
            if results.snapshot_files
            else None
        ),
        "timeout_s": spec.limits.timeout_s,
        "relay_output": spec.relays_output,
        "post_mortem": results.post_mortem,
        "nonce": nonce,
        "install_nonce": install_nonce,
        "measured_nonce": measured_nonce,
    }
    encoded = json.dumps(job).encode()
    return b"%d\n" % len(encoded) + encoded


class MarkedLine:
    """Finds one line the launcher marked with ``prefix`` and the host's nonce in an output
    stream: ``prefix + nonce + " " + report + "\\n"``. ``feed`` returns the bytes before the
    line; once ``report`` is set, ``rest`` holds what followed it in the same chunk."""

    def __init__(self, prefix: bytes, nonce: str):
        self.marker = prefix + nonce.encode() + b" "
        self.report: bytes | None = None
        self.rest = b""
        self._held = b""
        self._line: bytearray | None = None

    def feed(self, data: bytes) -> bytes:
        if self.report is not None:
            return b""
        if self._line is not None:
            self._take_line(data)
            return b""
        buffer = self._held + data
        found = buffer.find(self.marker)
        if found >= 0:
            self._held = b""
            self._line = bytearray()
            self._take_line(buffer[found + len(self.marker) :])
            return buffer[:found]
        keep = self._partial_marker_at_end(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else b""
        return buffer[: len(buffer) - keep]

    def flush(self) -> bytes:
        """At end of stream: bytes held back as a possible start of the line were the program's."""
        held, self._held = self._held, b""
        return held

    def _take_line(self, data: bytes) -> None:
        assert self._line is not None
        end = data.find(b"\n")
        self._line += data if end < 0 else data[:end]
        if end >= 0:
            self.report = bytes(self._line)
            self.rest = data[end + 1 :]

    def _partial_marker_at_end(self, buffer: bytes) -> int:
        for size in range(min(len(buffer), len(self.marker) - 1), 0, -1):
            if buffer.endswith(self.marker[:size]):
                return size
        return 0


class SoFarLines:
    """The launcher's measured-so-far lines in stderr, wherever they come (between the program's
    writes, even within one of its lines): ``feed`` takes them out and returns the program's bytes;
    ``reports`` has every line taken, unread ones first. They are marked with the job's
    ``measured_nonce``, never its ``nonce``: a program can read its own stderr back, so what they
    say is advice (what run_status shows), never the result."""

    def __init__(self, nonce: str):
        self._nonce = nonce
        self._line = MarkedLine(MEASURED_PREFIX, nonce)
        self.reports: list[bytes] = []

    def feed(self, data: bytes) -> bytes:
        program = []
        while True:
            program.append(self._line.feed(data))
            if self._line.report is None:
                return b"".join(program)
            self.reports.append(self._line.report)
            data = self._line.rest
            self._line = MarkedLine(MEASURED_PREFIX, self._nonce)

    def flush(self) -> bytes:
        return self._line.flush()


def measured_so_far(line: bytes) -> tuple[Measured, int] | None:
    """A measured-so-far line: the measurements, and the memory kills; None if it is not one."""
    try:
        raw: SoFarLine = json.loads(line)
        return _measured(raw), int(raw["oom_kills"] or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class EndOfJob(MarkedLine):
    """The launcher's end-of-job line in one output stream. What follows it (a lingering
    grandchild's output) is not the program's and is dropped."""

    def __init__(self, nonce: str):
        super().__init__(END_PREFIX, nonce)


class InstallDone(MarkedLine):
    """The launcher's install report, the first line on stdout of a run with requirements; the
    program starts, and its time limit begins, only after it."""

    def __init__(self, nonce: str):
        super().__init__(INSTALLED_PREFIX, nonce)


class FilesBlock:
    """The launcher's files block on stdout: a marked line with a JSON manifest, then exactly the
    bytes of the files it lists. ``feed`` returns what is not part of the block."""

    def __init__(self, nonce: str, max_files: int, max_bytes: int, prefix: bytes = FILES_PREFIX):
        self.header = MarkedLine(prefix, nonce)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.manifest: FilesOut | None = None  # without data until the block is complete
        self.data = bytearray()
        self._expected = 0

    @property
    def complete(self) -> bool:
        return self.manifest is not None and len(self.data) >= self._expected

    def feed(self, data: bytes) -> bytes:
        if self.complete:
            return data
        before = b""
        if self.manifest is None:
            before = self.header.feed(data)
            if self.header.report is None:
                return before
            self.manifest = _manifest(self.header.report, self.max_files, self.max_bytes)
            self._expected = sum(entry.size for entry in self.manifest.files)
            data = self.header.rest
        wanted = self._expected - len(self.data)
        self.data += data[:wanted]
        return before + data[wanted:]

    def flush(self) -> bytes:
        """At end of stream: bytes held back as a possible start of the header were the program's."""
        return self.header.flush() if self.manifest is None else b""

    def result(self) -> FilesOut | None:
        """The files, if the whole block came."""
        if self.manifest is None or not self.complete:
            return None
        manifest = self.manifest
        return FilesOut(
            manifest.files, manifest.omitted, manifest.changed, bytes(self.data), manifest.refused
        )


def _manifest(line: bytes, max_files: int, max_bytes: int) -> FilesOut:
    """The manifest, checked against what the job allowed; one that breaks the rules counts as
    refused (what follows it is then treated as output, within the output caps)."""
    try:
        raw = json.loads(line)
        files = [FileEntry(str(e["path"]), int(e["size"])) for e in raw["files"]]
        previews = [_preview(e.get("preview")) for e in raw["files"]]
        omitted = [_omitted(e) for e in raw["omitted"][:max_files]]
        changed = int(raw["changed"])
        refused = None if raw.get("refused") is None else str(raw["refused"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return _broken_rules()
    sizes = [entry.size for entry in files]
    if len(files) > max_files or min(sizes, default=0) < 0 or sum(sizes) > max_bytes:
        return _broken_rules()
    if sum(preview is not None for preview in previews) <= MAX_PREVIEWS:  # else none: a broken rule
        files = [
            replace(entry, preview=preview) if entry.path.lower().endswith(".parquet") else entry
            for entry, preview in zip(files, previews, strict=True)
        ]
    return FilesOut(files, omitted, max(changed, len(files) + len(omitted)), b"", refused)


def _preview(raw: Any) -> ArtifactPreview | None:
    """A file's preview, if it keeps to the rules (else it is dropped: the file still counts)."""
    if not isinstance(raw, dict):
        return None
    csv, rows = raw.get("csv"), raw.get("rows")
    if not isinstance(csv, str) or len(csv.encode(errors="replace")) > PREVIEW_BYTES:
        return None
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        return None
    return ArtifactPreview(csv=csv, rows=rows)


def _omitted(entry: dict[str, Any]) -> OmittedFile:
    kind = entry.get("kind")
    return OmittedFile(
        str(entry["path"]), int(entry["size"]), str(entry["reason"]), kind if kind in OMITTED_KINDS else "cap"
    )


def _broken_rules() -> FilesOut:
    return FilesOut([], [], 0, b"", "the sandbox's list of files broke the job's rules")


@dataclass(frozen=True)
class EndReport:
    """What the launcher's end-of-job line says."""

    exit_code: int | None  # None: the program never ran
    oom_killed: bool | None  # None: no cgroup counter to read, ask the engine
    return_value: str | None
    timed_out: bool  # the launcher stopped the program at its time limit
    usage: Usage | None = None
    measured: Measured = field(default_factory=Measured)
    oom_victim: Literal["program", "child"] | None = None
    post_mortem: PostMortem | None = None


def end_report(stdout_line: bytes | None, stderr_line: bytes | None) -> EndReport | None:
    """The end-of-job report, if both streams carried the same line."""
    if stdout_line is None or stdout_line != stderr_line:
        return None
    try:
        report = json.loads(stdout_line)
        code, oom_kills, value = report["exit_code"], report["oom_kills"], report.get("return_value")
        victim = report.get("oom_victim")
        return EndReport(
            exit_code=None if code is None else int(code),
            oom_killed=None if oom_kills is None else int(oom_kills) > 0,
            return_value=value if isinstance(value, str) else None,
            timed_out=report.get("timed_out") is True,
            usage=_usage(report.get("usage")),
            measured=_measured(report.get("measured")),
            oom_victim=victim if victim in ("program", "child") else None,
            post_mortem=_post_mortem(report.get("post_mortem")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _optional(kind: type[int] | type[float], value: Any) -> Any:
    return None if value is None else kind(value)


def _usage(raw: UsageLine | None) -> Usage | None:
    if raw is None:
        return None
    source = raw["source"]
    return Usage(
        peak_memory_bytes=_optional(int, raw["peak_memory_bytes"]),
        cpu_s=_optional(float, raw["cpu_s"]),
        wall_s=_optional(float, raw["wall_s"]),
        source="cgroup" if source == "cgroup" else "processes" if source == "processes" else None,
    )


def _measured(raw: MeasuredLine | None) -> Measured:
    if raw is None:
        return Measured()
    return Measured(
        forks_refused=_optional(int, raw["forks_refused"]),
        full=tuple(shown_name(str(path)) for path in raw["full"]),
        at_file_size=tuple(shown_name(str(path)) for path in raw["at_file_size"]),
        open_files_peak=_optional(int, raw["open_files_peak"]),
        tasks_peak=_optional(int, raw["tasks_peak"]),
    )


def _post_mortem(raw: PostMortemLine | None) -> PostMortem | None:
    if raw is None:
        return None
    dumps = tuple(ProcessDump(int(d["pid"]), d["program"] is True, str(d["text"])) for d in raw["dumps"])
    return PostMortem(dumps, {str(place): str(line) for place, line in raw["sources"].items()})


def install_outcome(line: bytes | None, elapsed_s: float, timeout_s: float) -> InstallOutcome:
    """The launcher's install report; without one, the install was stopped (for time, or with
    the sandbox)."""
    if line is None:
        return InstallOutcome(False, None, round(elapsed_s, 3), "", timeout_s)
    try:
        report = json.loads(line)
        return InstallOutcome(
            True, int(report["exit_code"]), float(report["seconds"]), str(report["output"]), timeout_s
        )
    except (ValueError, KeyError, TypeError):
        return InstallOutcome(True, None, round(elapsed_s, 3), "unreadable install report", timeout_s)
