"""The first step inside every sandbox container; its source is passed to ``python3 -c``.

The container starts with no job. Standard input then carries the job (its size in decimal and a
newline, then that much JSON: ``archive_bytes``, ``stdin_bytes``, ``entrypoint``, ``args``,
``env``, ``rlimits``, ``wheels``, ``notebook``, ``artifacts``, ``relay_output``, the nonces), a tar
of exactly ``archive_bytes`` bytes, and exactly ``stdin_bytes`` of the caller's stdin. Every part
is framed by its length, so nothing depends on the engine closing the launcher's stdin (Kubernetes'
attach cannot, before its v5 protocol). The launcher reads the line and the tar with unbuffered reads,
unpacks regular files and folders under /work (re-checking every name: defence in depth),
installs the job's wheels (if any) from the read-only /wheels into /packages, offline, and
reports that on a first stdout line of its own; then it runs ``python3 ENTRYPOINT ARGS...`` as
its child (through the notebook runner, when the job has it), with the job's resource limits
(open files, file size, core dumps; an engine that sets them already loses nothing) and the
caller's stdin on a pipe the launcher closes after its last byte.
The child writes straight into the container's stdout and stderr, unless the job says to relay
them (under gVisor, whose pipes return short writes that Python drops): then they are pipes the
launcher copies to its own, every byte. Because the job arrives over stdin, a container can be
started ahead of time and handed exactly one job.

The program runs as the same user as the launcher, so it can signal it. The launcher ignores
every signal it does not need (its clock is a deadline it checks, not an alarm), hands the
program the defaults back, and offers the program to the kernel's OOM killer first, so a memory
kill leaves the launcher to send the files back.

While the program runs the launcher measures what the kernel counts and what no counter keeps:
the sandbox's cgroup (peak memory, CPU time, forks the process limit refused, memory kills; v1
or v2), and every 50 ms whether /work, /tmp or /dev/shm is full and how many files each process
holds open; what it has seen so far goes to the host as a marked line on stderr whenever it
changes (at most every 0.5 s), marked with a nonce of its own: the program can read its stderr
back, so these lines are advice for a run followed while it runs, never the result. At the time
limit it first asks every Python process for its stacks (SIGURG, see
``agent_sandbox_postmortem.py`` in the image), over a socket of its own, then kills them.

When the child exits, the launcher kills whatever the program left running, writes the files the
program created or changed under /work as one block on stdout (a marked line with a manifest,
then the files' bytes), and writes an end-of-job line (the host's nonce, the exit code, the
container's OOM-kill count, a last expression's value, the usage, the limits measured and the
post-mortem) to stdout and to stderr, so the host has the whole result without waiting for the
engine to tear the container down. The launcher makes itself non-dumpable first, so the program
(same uid) cannot read the nonce out of its memory.

Self-contained and standard-library only: it runs on the sandbox image's Python.
"""

import contextlib
import ctypes
import fcntl
import json
import os
import re
import resource
import select
import selectors
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import termios
import threading
import time
import warnings  # already imported by subprocess

# Python 3.12+ warns at a fork() in a process with threads (the child could block on a lock one of
# them held). The launcher's child only sets itself up and execs the program, as it always has
# on 3.11, which does not warn; the warning would land in the program's stderr on 3.13.
warnings.filterwarnings("ignore", r"This process .* is multi-threaded", DeprecationWarning)

TYPE_CHECKING = False  # typing.TYPE_CHECKING, which mypy honours by name, without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import TypedDict, TypeVar

    T = TypeVar("T")

    # The job, as engine/protocol.py writes it (tests/unit/test_protocol.py keeps the two equal).
    class StateJob(TypedDict):
        code: str
        max_bytes: int

    class NotebookJob(TypedDict):
        runner: str
        max_chars: int
        state: StateJob | None

    class FileCaps(TypedDict):
        max_files: int
        max_bytes: int

    class ArtifactCaps(FileCaps):
        max_listed: int

    class Rlimits(TypedDict):
        nofile: int
        fsize: int
        core: int

    class Job(TypedDict):
        archive_bytes: int
        stdin_bytes: int
        state_bytes: int
        entrypoint: str
        args: list[str]
        env: dict[str, str]
        rlimits: Rlimits
        wheels: list[str]
        notebook: NotebookJob | None
        artifacts: ArtifactCaps
        snapshot: FileCaps | None
        timeout_s: float
        relay_output: bool
        post_mortem: bool
        nonce: str
        install_nonce: str
        measured_nonce: str

    # What the launcher reports, as engine/protocol.py reads it.
    class PreviewLine(TypedDict):
        csv: str
        rows: int

    class ManifestEntry(TypedDict):
        path: str
        size: int
        preview: PreviewLine | None

    class OmittedEntry(TypedDict):
        path: str
        size: int
        reason: str
        kind: str

    class Manifest(TypedDict):
        files: list[ManifestEntry]
        omitted: list[OmittedEntry]
        changed: int
        refused: str | None

    class InstallLine(TypedDict):
        exit_code: int
        seconds: float
        output: str

    class Counters(TypedDict):
        memory_peak: int | None
        cpu_ns: int | None
        oom_kills: int | None
        forks_refused: int | None

    class UsageLine(TypedDict):
        peak_memory_bytes: int | None
        cpu_s: float | None
        wall_s: float | None
        source: str | None

    class MeasuredLine(TypedDict):
        forks_refused: int | None
        full: list[str]
        at_file_size: list[str]
        open_files_peak: int | None
        tasks_peak: int | None

    class SoFarLine(MeasuredLine):
        oom_kills: int | None

    class Dump(TypedDict):
        pid: int
        program: bool
        text: str

    class PostMortemLine(TypedDict):
        dumps: list[Dump]
        sources: dict[str, str]

    class EndLine(TypedDict):
        exit_code: int | None
        oom_kills: int | None
        timed_out: bool
        return_value: str | None
        usage: UsageLine
        measured: MeasuredLine
        oom_victim: str | None
        post_mortem: PostMortemLine | None

    class Ran(TypedDict):  # how the program ended, as _run saw it
        exit_code: int
        return_value: str | None
        state: bytes | None  # the notebook runner's report line and state, if it kept one
        timed_out: bool
        wall_s: float
        dumps: list[Dump]

    Survey = tuple[list[tuple[str, int, int]], list[OmittedEntry]]
    Chosen = list[tuple[str, int, int]]  # path, size, an open descriptor

WORK = "/work"
WHEELS = "/wheels"
PACKAGES = "/packages"
INSTALL_OUTPUT_BYTES = 8192
REPORT_BYTES = 1 << 16
FAILURE_EXIT = 125
# Args and env are at most 256 KiB, which JSON's escapes can make 1.5 MiB; the runner is ~5 KiB.
MAX_HEADER_BYTES = 4 << 20
# Folders are opened by path: deeper ones (PATH_MAX is 4096 bytes) are listed as not looked at.
MAX_FOLDER_PATH_BYTES = 2048
END_PREFIX = b"\x00agent-sandbox-end "
INSTALLED_PREFIX = b"\x00agent-sandbox-installed "
FILES_PREFIX = b"\x00agent-sandbox-files "
SNAPSHOT_PREFIX = b"\x00agent-sandbox-snapshot "
STATE_PREFIX = b"\x00agent-sandbox-state "
MEASURED_PREFIX = b"\x00agent-sandbox-measured "
TELL_EVERY_S = 0.5  # at most this often, what was measured so far goes to the host when it changed
PR_SET_DUMPABLE = 4
CGROUP = "/sys/fs/cgroup"  # the sandbox's own cgroup, as the container sees it
FILESYSTEMS = ("/work", "/tmp", "/dev/shm")  # the program's writable places, each of a fixed size
SAMPLE_S = 0.05  # how often the filesystems and open files are looked at while the program runs
MAX_LISTED = 5  # files at the size limit named
MAX_LOOKED_AT = 10_000  # files looked at in /tmp and /dev/shm for one at the size limit
POSTMORTEM_ENV = "AGENT_SANDBOX_POSTMORTEM"
DUMP_SIGNAL = signal.SIGURG  # its default action is to ignore: a process that is not Python lives on
DUMP_WAIT_S = 0.3  # at most, for the dumps to come, before the kill
DUMP_QUIET_S = 0.05  # once every process has written, this long without a byte ends the wait
DUMP_BYTES = 8192  # kept of each process's dump
MAX_DUMPED = 16  # processes whose dumps are kept
MAX_SOURCES = 64  # source lines sent for the dumps' frames in the program's files
SOURCE_BYTES = 1 << 20  # read of each such file, at most
MAX_CONNECTIONS = 64  # post-mortem connections held at once
# A Parquet file that comes back gets its first rows as CSV text, for the run viewer (at most
# MAX_PREVIEWS files, PREVIEW_BYTES of CSV each: fewer rows when need be), if the image has pyarrow.
MAX_PREVIEWS = 4
PREVIEW_BYTES = 65536  # 64 KiB: a literal, as tests/unit/test_protocol.py reads it
PREVIEW_ROWS = 200
PREVIEW_WAIT_S = 5.0  # for all of them
OWN_DESCRIPTORS = 24  # kept free of them for the launcher's own work (pipes, /proc, the files)
_FRAME = re.compile(r'^  File "(/work/[^"\x00]{1,1024})", line ([0-9]{1,9}) in ', re.MULTILINE)
# Signals the launcher keeps: those it cannot catch, its child's, and SIGCONT (the host's way to
# resume a launcher the program stopped). A real fault of its own (SIGSEGV, SIGABRT from abort())
# still ends it: the kernel and the C library force the default action for those, ignored or not.
_KEPT_SIGNALS = {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGCONT}
# Writes the previews: run as its own process (``python3 -I`` in /, so nothing the program left
# in /work or the environment is imported, and the launcher's memory is not its), on the files
# the launcher holds open, with the image's pyarrow; nothing at all without it. Prints a JSON
# object: for each file (by its place among the arguments), its CSV and its number of rows.
PARQUET_TO_CSV = """
import contextlib, csv, io, json, sys
with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as score:
    score.write("1000")  # under memory pressure it goes first, not the launcher
try:
    import pyarrow.parquet
except ImportError:
    sys.exit()
rows, cap = int(sys.argv[1]), int(sys.argv[2])

def as_csv(names, columns, count):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\\n")
    writer.writerow(names)
    writer.writerows(zip(*(["" if v is None else v for v in column[:count]] for column in columns)))
    return out.getvalue()

previews = {}
for place, path in enumerate(sys.argv[3:]):
    try:
        parquet = pyarrow.parquet.ParquetFile(path)
        first = next(parquet.iter_batches(batch_size=rows), None)
        names = parquet.schema_arrow.names
        columns = [column.to_pylist() for column in first.columns] if first is not None else []
        count = first.num_rows if first is not None else 0
        text = as_csv(names, columns, count)
        while len(text.encode()) > cap and count:
            count //= 2
            text = as_csv(names, columns, count)
        if len(text.encode()) <= cap:
            previews[place] = {"csv": text, "rows": parquet.metadata.num_rows}
    except Exception:
        continue
print(json.dumps(previews))
"""
# Our lines on stderr and the output we relay there take turns, whole: a line of ours must never
# land inside a short write of the program's (gVisor's pipes make them), nor the other way round.
STDERR_LOCK = threading.Lock()


def _fail(message: str) -> None:
    sys.stderr.write(f"agent-sandbox launcher: {message}\n")
    sys.exit(FAILURE_EXIT)


class _ArchiveInput:
    """Exactly ``size`` bytes of stdin, read unbuffered, so none of the caller's stdin after the
    tar is consumed; tar members stream through it to disk without a copy in memory."""

    def __init__(self, size: int):
        self.remaining = size

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            chunks = []
            while self.remaining:
                chunks.append(self.read(self.remaining))
            return b"".join(chunks)
        size = min(size, self.remaining)
        if size == 0:
            return b""
        data = os.read(0, size)
        if not data:
            _fail("standard input ended before the files did")
        self.remaining -= len(data)
        return data

    def drain(self) -> None:
        while self.remaining:
            self.read(1 << 16)


def _read_job() -> "Job":
    """The job: its size in decimal and a newline (read a byte at a time, so never past it),
    then exactly that many bytes of JSON."""
    size = bytearray()
    while not size.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte or len(size) > 20:
            _fail("no job arrived")
        size += byte
    if int(size) > MAX_HEADER_BYTES:
        _fail("the job description is too large")
    job: Job = json.loads(_ArchiveInput(int(size)).read())
    return job


def _target(name: str) -> str:
    parts = name.split("/")
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        _fail(f"refusing archive member {name!r}")
    return os.path.join(WORK, *parts)


def _unpack(archive: _ArchiveInput) -> "dict[str, tuple[int, int]]":
    """Unpack the caller's files; returns each one's size and modification time, to tell
    later which ones the program changed."""
    sent = {}
    with tarfile.open(fileobj=archive, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            target = _target(member.name)
            if member.isdir():
                os.makedirs(target, mode=0o755, exist_ok=True)
            elif member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
                with open(target, "xb") as out:
                    shutil.copyfileobj(source, out)
                status = os.stat(target)
                sent[member.name] = (status.st_size, status.st_mtime_ns)
            else:
                _fail(f"refusing archive member {member.name!r}: not a file or folder")
    archive.drain()
    return sent


def _counters(root: str = CGROUP) -> "Counters":
    """What the kernel counts for the sandbox's cgroup: peak memory (bytes), CPU time (ns), memory
    kills, and forks or threads the process limit refused; None where it keeps no such file (gVisor
    mounts no cgroup files at all). cgroup v2 when its root says so, else v1."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        cpu_us = _counter(root, "cpu.stat", "usage_usec")
        # v2 counts a refusal where the limit that refused it is set (and above): a container's own
        # limit (Docker), not a pod's above the container. Without a limit here there is no
        # counter, and the launcher samples the tasks instead.
        limited = _counter(root, "pids.max") is not None
        refused = _counter(root, "pids.events", "max") if limited else None
        return {
            "memory_peak": _counter(root, "memory.peak"),
            "cpu_ns": None if cpu_us is None else cpu_us * 1000,
            "oom_kills": _counter(root, "memory.events", "oom_kill"),
            "forks_refused": refused,
        }
    return {
        "memory_peak": _counter(root, "memory/memory.max_usage_in_bytes"),
        "cpu_ns": _counter(root, "cpuacct/cpuacct.usage"),
        "oom_kills": _counter(root, "memory/memory.oom_control", "oom_kill"),
        # v1 counts a refusal in the cgroup of the process that forked, whichever limit refused it.
        "forks_refused": _counter(root, "pids/pids.events", "max"),
    }


def _counter(root: str, name: str, key: "str | None" = None) -> "int | None":
    """A cgroup file's number, or its ``key``'s in a file of "key value" lines."""
    try:
        with open(os.path.join(root, name)) as counters:
            text = counters.read()
    except OSError:
        return None
    try:
        if key is None:
            return int(text)
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except ValueError:
        pass
    return None


def _grew(before: "int | None", after: "int | None") -> "int | None":
    return None if before is None or after is None else after - before


class _Watch:
    """What no counter keeps, looked at while the program runs and as it ends: which of the
    program's filesystems filled up, the most files one process held open and, where the kernel
    counts no refused forks (gVisor, whose RLIMIT_NPROC holds every task of the sandbox's user),
    the most tasks (processes and threads) of the sandbox's user at once, ours and init's
    included, once the program has started a task of its own."""

    def __init__(self, before: "Counters", teller: "_Teller") -> None:
        self.full: list[str] = []
        self.open_files_peak = 0
        self.tasks_peak: int | None = 0 if before["forks_refused"] is None else None
        self._lock = threading.Lock()  # the waiting loop and the reaper both look
        self._before = before
        self.teller = teller

    def tell(self) -> None:
        """Hand what was measured so far to the teller: a run followed while it runs
        (run_status) sees the limits it reached."""
        now = _counters()
        self.teller.tell(
            {
                "forks_refused": _grew(self._before["forks_refused"], now["forks_refused"]),
                "full": list(self.full),
                "at_file_size": [],  # looked for once, at the end
                "open_files_peak": self.open_files_peak,
                "tasks_peak": self.tasks_peak,
                "oom_kills": _grew(self._before["oom_kills"], now["oom_kills"]),
            }
        )

    def sample(self, ended: int = 0) -> None:
        """Look now; ``ended`` is a child that has exited but is not yet reaped: its task still
        counts toward the limit (gVisor lists such a zombie with no task folder)."""
        with self._lock:
            for mount in FILESYSTEMS:
                if mount not in self.full and _is_full(mount):
                    self.full.append(mount)
            tasks, programs, own, uid = 0, 0, os.getpid(), os.getuid()
            try:
                listed = [int(name) for name in os.listdir("/proc") if name.isdigit()]
            except OSError:  # out of descriptors, say: this look is skipped
                return
            if ended and ended not in listed:
                tasks = programs = 1
            for pid in listed:
                if pid not in (1, own):
                    with contextlib.suppress(OSError):  # gone meanwhile
                        self.open_files_peak = max(self.open_files_peak, len(os.listdir(f"/proc/{pid}/fd")))
                try:
                    if self.tasks_peak is None or os.stat(f"/proc/{pid}").st_uid != uid:
                        continue
                except OSError:
                    continue  # gone meanwhile
                try:
                    held = max(1, len(os.listdir(f"/proc/{pid}/task")))
                except OSError:
                    held = 1  # a zombie under gVisor has no task folder, and still counts
                tasks += held
                programs += held if pid not in (1, own) else 0
            if self.tasks_peak is not None and programs > 1:  # only once the program started one
                # As PID 1 we are a pod's container: the pod's pause process counts toward its
                # limit but is not in our PID namespace.
                self.tasks_peak = max(self.tasks_peak, tasks + (1 if own == 1 else 0))


class _Teller:
    """Writes the newest measured-so-far line, when it changed, on stderr, from a thread of its
    own: a stderr the host reads slowly (or the relay holding it) must never hold up the loop that
    keeps the time limit. Marked with the job's ``measured_nonce``: the program can read it."""

    def __init__(self, nonce: str) -> None:
        self._nonce = nonce
        self._newest: SoFarLine | None = None
        self._told: SoFarLine | None = None
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def tell(self, so_far: "SoFarLine") -> None:
        if so_far != self._newest:
            self._newest = so_far
            self._wake.set()

    def stop(self) -> None:
        """No line after this returns (or after a second: a stuck stderr is the host's problem)."""
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=1.0)

    def _write(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            newest = self._newest
            if self._stopped:
                return
            if newest is not None and newest != self._told:
                self._told = newest
                with STDERR_LOCK, contextlib.suppress(OSError):
                    _write_all(2, _marked_line(MEASURED_PREFIX, self._nonce, newest))


def _is_full(mount: str) -> bool:
    """No block or no inode left: the next write fails with ENOSPC."""
    try:
        status = os.statvfs(mount)
    except OSError:
        return False
    return status.f_blocks > 0 and (status.f_bavail == 0 or (status.f_files > 0 and status.f_favail == 0))


def _at_file_size(limit: int, sent: "dict[str, tuple[int, int]]", survey: "Survey") -> "list[str]":
    """Files the program left at the file-size rlimit (one byte over the limit: a write past the
    limit was refused, and the kernel stops the file exactly there): in /work (from the survey),
    /tmp and /dev/shm (looked through here, at most MAX_LOOKED_AT entries, links not followed)."""
    found = [
        f"{WORK}/{path}"
        for path, size, modified in survey[0]
        if size >= limit and sent.get(path) != (size, modified)
    ]
    pending, looked_at = list(FILESYSTEMS[1:]), 0
    while pending and len(found) < MAX_LISTED:
        try:
            with os.scandir(pending.pop()) as listing:
                for entry in listing:
                    looked_at += 1
                    if looked_at > MAX_LOOKED_AT:
                        return found[:MAX_LISTED]
                    if entry.is_dir(follow_symlinks=False):
                        if len(os.fsencode(entry.path)) <= MAX_FOLDER_PATH_BYTES:
                            pending.append(entry.path)
                    elif (
                        entry.is_file(follow_symlinks=False)
                        and entry.stat(follow_symlinks=False).st_size >= limit
                    ):
                        found.append(entry.path)
        except OSError:
            continue
    return found[:MAX_LISTED]


class _DumpChannel:
    """The launcher's end of the post-mortem channel: an abstract Unix socket (private to the
    sandbox's network namespace, its name random) each Python process of the run connects to at
    its start, writing its pid as a first line. The launcher's waiting loop polls it: until
    ``collect``, whatever else arrives is read and dropped (no dump is due, so it can only be
    forged); ``collect`` sends SIGURG to every process and keeps what each writes back, by the
    process the kernel says holds the connection (SO_PEERCRED; gVisor answers with the listener's
    own pid, and then the pid the process wrote says). Connections are capped well below the
    launcher's own descriptor limit, which is the sandbox's."""

    def __init__(self, wake: int) -> None:
        self.name = f"agent-sandbox-postmortem-{os.urandom(8).hex()}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind("\0" + self.name)
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(wake, selectors.EVENT_READ)  # the program ended: stop waiting
        self._room = _room_for_connections()
        self._listening = True
        self._peers: dict[socket.socket, int] = {}  # 0 until known
        self._first_lines: dict[socket.socket, bytearray] = {}  # until each has come whole
        self._dumps: dict[int, bytearray] = {}
        self._program = 0  # whose dump always has a place, once asked
        self._keeping = False
        self._last_byte = 0.0
        self._closed = False

    def poll(self, timeout: float) -> None:
        """Take what has come, waiting at most ``timeout`` for anything (or the program's end)."""
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._listener:
                self._accept()
            elif isinstance(key.fileobj, socket.socket):
                if key.fileobj in self._peers:  # not forgotten since the select
                    self._receive(key.fileobj)
            else:
                with contextlib.suppress(OSError):
                    os.read(key.fd, 64)

    def _accept(self) -> None:
        try:
            peer, _ = self._listener.accept()
        except BlockingIOError:
            return
        except OSError:  # out of descriptors after all: wait for a connection to close
            self._pause()
            return
        try:
            peer.setblocking(False)
            credentials = peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            self._selector.register(peer, selectors.EVENT_READ)
        except OSError:  # the kernel out of room for it (epoll entries count in the sandbox's memory)
            peer.close()
            return
        pid = struct.unpack("3i", credentials)[0]
        self._peers[peer] = 0 if pid in (0, os.getpid()) else pid
        self._first_lines[peer] = bytearray()
        if len(self._peers) >= self._room:
            self._pause()

    def _pause(self) -> None:
        if self._listening:
            self._selector.unregister(self._listener)
            self._listening = False

    def _receive(self, peer: socket.socket) -> None:
        try:
            data = peer.recv(DUMP_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._forget(peer)
            return
        first = self._first_lines.get(peer)
        if first is not None:
            first += data
            line, newline, data = bytes(first).partition(b"\n")
            if not newline:
                if len(first) > 20:
                    self._forget(peer)
                return
            del self._first_lines[peer]
            if not self._peers[peer]:
                self._peers[peer] = int(line) if line.isdigit() and len(line) < 10 else 0
        pid = self._peers[peer]
        if not (data and pid and self._keeping):
            return
        if pid in self._dumps or pid == self._program or len(self._dumps) < MAX_DUMPED - 1:
            kept = self._dumps.setdefault(pid, bytearray())
            kept += data[: DUMP_BYTES - len(kept)]
            self._last_byte = time.monotonic()

    def _forget(self, peer: socket.socket) -> None:
        self._selector.unregister(peer)
        peer.close()
        del self._peers[peer]
        self._first_lines.pop(peer, None)
        if not self._listening and len(self._peers) < self._room:
            with contextlib.suppress(OSError):
                self._selector.register(self._listener, selectors.EVENT_READ)
                self._listening = True

    def collect(self, program: int) -> "list[Dump]":
        """Ask every process for its stacks and wait for them (at most DUMP_WAIT_S): each Python
        process's dump, the program's first. The connections stay open until the kill: a process
        still writing must not die of SIGPIPE first."""
        self.poll(0)  # what came before the signal was no dump: dropped
        self._program, self._keeping = program, True
        asked = set(self._peers.values()) - {0}
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, DUMP_SIGNAL)  # every process but PID 1 and us
        started = time.monotonic()
        while time.monotonic() - started < DUMP_WAIT_S:
            self.poll(0.01)
            silent = asked.intersection(self._peers.values()) - set(self._dumps)
            if not silent and time.monotonic() - self._last_byte > DUMP_QUIET_S:
                break
        order = sorted(self._dumps, key=lambda pid: (pid != program, pid))
        return [
            {"pid": pid, "program": pid == program, "text": self._dumps[pid].decode("utf-8", "replace")}
            for pid in order
        ]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for peer in [self._listener, *self._peers]:
            peer.close()
        self._selector.close()


def _room_for_connections() -> int:
    """Post-mortem connections the launcher can hold beside its own descriptors (its limit is the
    sandbox's); with none to spare there is no post-mortem."""
    return min(MAX_CONNECTIONS, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - OWN_DESCRIPTORS)


def _sources(dumps: "list[Dump]") -> "dict[str, str]":
    """The line of code of each frame in the program's own files, keyed ``FILE:LINE`` as the
    dumps name them: read once per file, at most SOURCE_BYTES of it, and only a regular file
    that really is under /work (not one a link the program made points to elsewhere)."""
    wanted: dict[str, set[int]] = {}
    for dump in dumps:
        for path, number in _FRAME.findall(dump["text"]):
            if sum(len(lines) for lines in wanted.values()) < MAX_SOURCES:
                wanted.setdefault(path, set()).add(int(number))
    found: dict[str, str] = {}
    for path, numbers in wanted.items():
        data = _read_own_file(path)
        if data is None:
            continue
        lines = data.split(b"\n", max(numbers))
        whole = len(lines) if len(data) < SOURCE_BYTES else len(lines) - 1  # a cut piece is no line
        for number in numbers:
            if 0 < number <= whole:
                text = lines[number - 1][:400].decode("utf-8", "replace").strip()[:200]
                if text:
                    found[f"{path}:{number}"] = text
    return found


def _read_own_file(path: str) -> "bytes | None":
    """At most SOURCE_BYTES of ``path`` if it is a regular file that really is under /work (the
    kernel follows the links, at most 40; where they led is asked of the descriptor); else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not os.readlink(f"/proc/self/fd/{fd}").startswith(
            WORK + "/"
        ):
            return None
        return os.read(fd, SOURCE_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)


def _install(wheels: "list[str]") -> "InstallLine":
    """Install the wheels into /packages with uv (fast) or else pip; no index, no network, no
    dependency resolution (the host did that), no config files from /work. The installer
    unpacks into a folder on /packages itself, not /tmp (too small for scipy and friends), and
    links from there: the packages take their room once, not twice."""
    paths = []
    for name in wheels:
        if "/" in name or not name.endswith(".whl"):
            _fail(f"refusing wheel name {name!r}")
        paths.append(os.path.join(WHEELS, name))
    uv = shutil.which("uv")
    if uv:
        command = [uv, "pip", "install", "--offline", "--no-index", "--no-deps", "--no-cache",
                   "--no-config", "--python", sys.executable, "--target", PACKAGES,
                   "--link-mode", "hardlink", *paths]  # fmt: skip
    else:
        command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                   "--no-cache-dir", "--disable-pip-version-check", "--isolated", "--target",
                   PACKAGES, *paths]  # fmt: skip
    started = time.monotonic()
    unpacked = os.path.join(PACKAGES, ".installing")
    try:
        os.makedirs(unpacked, exist_ok=True)
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd="/",
            env={**os.environ, "TMPDIR": unpacked},
        )
        exit_code, output = done.returncode, done.stdout
    except OSError as exc:
        exit_code, output = 127, f"cannot start the installer: {exc}".encode()
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
    return {
        "exit_code": exit_code,
        "seconds": round(time.monotonic() - started, 3),
        "output": output[-INSTALL_OUTPUT_BYTES:].decode("utf-8", errors="replace"),
    }


def _wait_until_read(fd: int, limit_s: float = 2.0) -> None:
    """Hold the program back until the host has taken our line out of the output pipe: the
    program could otherwise read it first (by opening /proc/self/fd/1) and keep it from the host."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            pending = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return  # not a pipe: nobody can read it back
        if pending == 0:
            return
        time.sleep(0.001)


def _marked_line(prefix: bytes, nonce: str, report: "Manifest | InstallLine | EndLine | SoFarLine") -> bytes:
    return prefix + nonce.encode() + b" " + json.dumps(report).encode() + b"\n"


def _ignore_foreign_signals() -> "list[int]":
    """Ignore every signal the launcher does not need, so the program (the same user) can neither
    end it early nor make it think time ran out; returns them, for the child to take back."""
    ignored: list[int] = []
    for number in signal.valid_signals():
        if number in _KEPT_SIGNALS:
            continue
        try:
            signal.signal(number, signal.SIG_IGN)
        except (OSError, ValueError):  # one the platform will not let us handle
            continue
        ignored.append(number)
    return ignored


# What python3 reads as it starts (besides its own flags): a job that sets one of these, or sends a
# user site-packages (HOME is /work), cannot take a runner started before the job arrived.
_READ_AT_START = ("PYTHON", "LC_", "LANG", "HOME", "PATH", "TZ")


class _Program:
    """The program's process as the launcher starts it (``python3`` with the sandbox's defaults,
    in a process group of its own, offered to the OOM killer first, on pipes of the launcher's for
    stdin, for output when it is relayed and, for the notebook runner, for its parameters, its
    report and the workspace's state), and the launcher's ends of those pipes."""

    def __init__(
        self,
        command: "list[str]",
        env: "dict[str, str]",
        ignored: "list[int]",
        rlimits: "Rlimits | None",
        relay: bool,
        runner: bool,
        post_mortem: bool,
    ) -> None:
        self.relay = relay
        self.wake = os.pipe()  # the reaper's word that the program has ended
        self.channel = _DumpChannel(self.wake[0]) if post_mortem and _room_for_connections() > 0 else None
        if self.channel is not None:
            env = {**env, POSTMORTEM_ENV: self.channel.name}
        stdin_read, self.stdin = os.pipe()
        outputs = {1: os.pipe(), 2: os.pipe()} if relay else {}  # the program's stdout and stderr
        self.outputs = [read_end for read_end, _ in outputs.values()]
        # The runner's own: its parameters, its report, the workspace's state in and out.
        params_read, self.params = os.pipe() if runner else (-1, -1)
        self.report, self.report_write = os.pipe() if runner else (-1, -1)
        self.state_in, self.state_in_write = os.pipe() if runner else (-1, -1)
        self.state_out, self.state_out_write = os.pipe() if runner else (-1, -1)
        if runner:
            command = [*command, str(params_read)]
        self.started = time.monotonic()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.setpgid(0, 0)  # its killpg(0, ...) must not reach us
                for number in ignored:  # a program starts with the defaults, as from a shell
                    signal.signal(number, signal.SIG_DFL)
                _first_for_the_oom_killer()
                if rlimits is not None:
                    _limit(0, rlimits)
                os.chdir(WORK)
                os.dup2(stdin_read, 0)
                for target, (_, write_end) in outputs.items():
                    os.dup2(write_end, target)
                if runner:  # our pipes are not inherited (O_CLOEXEC) but these
                    for fd in (params_read, self.report_write, self.state_in, self.state_out_write):
                        os.set_inheritable(fd, True)
                os.execvpe("python3", command, env)
            except BaseException as exc:
                os.write(2, f"agent-sandbox launcher: cannot start python3: {exc}\n".encode())
            finally:
                os._exit(127)
        for fd in (stdin_read, params_read, *(write_end for _, write_end in outputs.values())):
            if fd >= 0:
                os.close(fd)

    def takes(self, job: "Job", sent: "dict[str, tuple[int, int]]") -> bool:
        """Whether this runner, started before ``job`` came, runs it exactly as one started for
        it would (then with the job's rlimits): a notebook cell of the same runner, output relayed
        as the job says, a post-mortem channel as it asks, no wheels to install first, nothing
        python3 reads as it starts set by the job or sent as its files."""
        notebook = job["notebook"]
        fits = (
            notebook is not None
            and notebook["runner"] == sys.argv[1]
            and job["relay_output"] == self.relay
            and job["post_mortem"] == (self.channel is not None)
            and not job["wheels"]
            and not any(name.startswith(_READ_AT_START) for name in job["env"])
            and not any(path.startswith(".local/") for path in sent)
        )
        # It has the launcher's limits: the job's already where the engine set them on the sandbox.
        ours = all(resource.getrlimit(which) == (amount, amount) for which, amount in _limits(job["rlimits"]))
        if fits and not ours:
            try:
                _limit(self.pid, job["rlimits"])
            except OSError:  # gVisor sets no limit on another process
                fits = False
        if not fits:
            self.discard()
        return fits

    def give_parameters(self, job: "Job", script: str, env: "dict[str, str]") -> None:
        """Tell the runner what to run: NUL-separated fields (no argument, name or value can hold
        a NUL) in one write it reads to the end: its report descriptor, the most characters of a
        last expression, the state's descriptors and cap (or "-") and code, the descriptors it
        should close, ``env`` to add, the script and its arguments."""
        notebook = job["notebook"]
        assert notebook is not None
        state_job = notebook["state"]
        state, code, unused = "-", "", f"{self.state_in},{self.state_out_write}"
        if state_job is not None:
            state, code, unused = (
                f"{self.state_in},{self.state_out_write},{state_job['max_bytes']}",
                state_job["code"],
                "",
            )
        fields = [str(self.report_write), str(notebook["max_chars"]), state, code, unused, str(len(env))]
        fields += [f"{name}={value}" for name, value in env.items()]
        fields += [script, *job["args"]]
        with contextlib.suppress(OSError):  # a runner that died first: its exit status tells
            _write_all(self.params, "\0".join(fields).encode("utf-8", "surrogateescape"))
        os.close(self.params)
        for fd in (self.report_write, self.state_in, self.state_out_write):
            os.close(fd)

    def discard(self) -> None:
        """Kill it and close every pipe: the job is not for it. (It may not have made its process
        group yet: it is killed by pid too.)"""
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError):
                kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        runner = (self.params, self.report, self.report_write, self.state_in, self.state_in_write)
        for fd in (*self.wake, self.stdin, *self.outputs, *runner, self.state_out, self.state_out_write):
            if fd >= 0:
                os.close(fd)
        if self.channel is not None:
            self.channel.close()


def _limits(rlimits: "Rlimits") -> "list[tuple[int, int]]":
    """The job's open-file, file-size and core limits, as (resource, amount)."""
    return [
        (resource.RLIMIT_NOFILE, rlimits["nofile"]),
        (resource.RLIMIT_FSIZE, rlimits["fsize"]),
        (resource.RLIMIT_CORE, rlimits["core"]),
    ]


def _limit(pid: int, rlimits: "Rlimits") -> None:
    """Set the job's limits on process ``pid`` (0: this one)."""
    for which, amount in _limits(rlimits):
        if pid:
            resource.prlimit(pid, which, (amount, amount))
        else:
            resource.setrlimit(which, (amount, amount))


def _early_runner(ignored: "list[int]", env: "dict[str, str]") -> "_Program | None":
    """The notebook runner, started before any job arrives when the launcher is given its source
    (and whether output is relayed): a sandbox started ahead of time then runs a cell without
    waiting for python3 to start. It reads its parameters once the job has come; a job it does
    not fit (``_Program.takes``) gets a runner of its own."""
    if len(sys.argv) != 3:
        return None
    command = ["python3", "-P", "-c", sys.argv[1]]
    return _Program(command, env, ignored, None, sys.argv[2] == "relay", runner=True, post_mortem=True)


def _run(
    job: "Job",
    stdin: bytes,
    saved_state: bytes,
    env: "dict[str, str]",
    ignored: "list[int]",
    watch: "_Watch",
    early: "_Program | None",
) -> "Ran":
    """Run the program as our child in a process group of its own (``early``, if it was started
    before the job came and takes it), killing that group once its time limit has passed (after
    asking every Python process where it was, if the job says so): how it ended (its exit code as
    a shell gives it, 128+N when killed by signal N), what the notebook runner reported, if used
    (a last expression, the workspace's Python state, which it restores from ``saved_state``),
    whether time ran out, its wall time and the dumps. Stopping it here, not by killing the
    container, is what lets the files it wrote still come back."""
    entrypoint, notebook = job["entrypoint"], job["notebook"]
    script = "./" + entrypoint if entrypoint.startswith("-") else entrypoint  # not an option
    if early is not None:
        program = early
        program.started = time.monotonic()
    else:
        # -P: the runner's own imports must not find the program's files (a types.py).
        command = (
            ["python3", "-P", "-c", notebook["runner"]] if notebook else ["python3", script, *job["args"]]
        )
        program = _Program(
            command,
            env,
            ignored,
            job["rlimits"],
            job["relay_output"],
            notebook is not None,
            job["post_mortem"],
        )
    if notebook:
        program.give_parameters(job, script, job["env"] if early is not None else {})
    state_job = notebook["state"] if notebook else None
    state_out_kept: list[bytes] = []
    state_threads = []
    if state_job:
        state_cap = state_job["max_bytes"] + REPORT_BYTES + 1  # one more: over the cap shows
        state_threads = [
            threading.Thread(target=_drain, args=(program.state_out, state_out_kept, state_cap), daemon=True)
        ]
        if saved_state:  # a thread less when there is none: under gVisor threads count as processes
            state_threads.append(
                threading.Thread(target=_give_stdin, args=(program.state_in_write, saved_state), daemon=True)
            )
        else:
            os.close(program.state_in_write)
    elif notebook:
        os.close(program.state_in_write)
        os.close(program.state_out)
    if stdin:  # a thread less when there is none: under gVisor threads count toward the process limit
        threading.Thread(target=_give_stdin, args=(program.stdin, stdin), daemon=True).start()
    else:
        os.close(program.stdin)
    reported: list[bytes] = []
    # Read while it runs: a full pipe must never block the program.
    readers = (
        [threading.Thread(target=_drain, args=(program.report, reported), daemon=True)] if notebook else []
    )
    relays = [
        threading.Thread(target=_relay, args=(read_end, target), daemon=True)
        for target, read_end in zip((1, 2), program.outputs, strict=False)
    ]
    for thread in (*readers, *relays, *state_threads):
        thread.start()
    code, timed_out, dumps = _wait(program.pid, job["timeout_s"], watch, program.channel, program.wake)
    wall_s = time.monotonic() - program.started
    if program.channel is not None:
        program.channel.close()
    for fd in program.wake:
        os.close(fd)
    _end_everything_else()  # now no one else holds the pipes open: the readers see their ends
    for thread in (*readers, *state_threads):
        thread.join(timeout=5)
    for relay_thread in relays:  # every byte of output before any line of ours; the host's deadline bounds it
        relay_thread.join()
    value = b"".join(reported)[:REPORT_BYTES].decode("utf-8", errors="replace")
    kept_state = b"".join(state_out_kept)
    state_out_kept.clear()  # one copy of a large state, not two
    return {
        "exit_code": 128 - code if code < 0 else code,
        "return_value": value or None,
        "state": kept_state if state_job and not timed_out else None,
        "timed_out": timed_out,
        "wall_s": round(wall_s, 3),
        "dumps": dumps,
    }


def _give_stdin(fd: int, data: bytes) -> None:
    """Write the caller's stdin to the program as it reads, then close it: its end of input.
    A program that exits (or closes its stdin) first just ends the writing."""
    with contextlib.suppress(OSError):
        _write_all(fd, data)
    with contextlib.suppress(OSError):
        os.close(fd)


def _first_for_the_oom_killer() -> None:
    """Offer this process (and what it starts) to the OOM killer before the launcher: the program
    is what uses the memory, and the launcher must live to send its files back. Raising one's
    own score needs no privilege, but a process made non-dumpable (as the launcher makes itself,
    and its child is until it execs) has its /proc files owned by root: it becomes dumpable
    first. Nothing else runs yet that could look at it (the program is this process, after exec)."""
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as score:
        score.write("1000")


def _wait(
    pid: int, timeout_s: float, watch: "_Watch", channel: "_DumpChannel | None", wake: "tuple[int, int]"
) -> "tuple[int, bool, list[Dump]]":
    """Wait for the child, looking at what ``watch`` keeps every SAMPLE_S and polling the
    post-mortem ``channel``, and kill its process group if it still runs once ``timeout_s`` has
    passed (asking the channel for the stacks first): its exit status (negative: the signal that
    ended it), whether we stopped it, and the dumps. A thread reaps it and says so on ``wake``; the
    deadline is checked on the monotonic clock, so no signal the program sends us can end the wait
    early, and a launcher the program stopped for a while does not take a program that ended
    meanwhile for one out of time."""
    statuses: list[int] = []
    wake_read, wake_write = wake

    def reap() -> None:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(Exception):  # a look that fails must not cost the exit status
            watch.sample(ended=pid)  # as it ended, still counted, beside whatever it left running
        statuses.append(os.waitpid(pid, 0)[1])
        os.write(wake_write, b"\0")

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    now = time.monotonic()
    deadline, next_look, next_tell = now + timeout_s, now + SAMPLE_S, now + TELL_EVERY_S
    killed, dumps = False, []
    while not statuses:
        now = time.monotonic()
        if now >= deadline:
            if not _has_ended(pid):
                watch.sample()
                with contextlib.suppress(Exception):  # no post-mortem rather than no result
                    dumps = channel.collect(pid) if channel is not None else []
                for kill in (os.killpg, os.kill):  # the group, and the child should it have left it
                    with contextlib.suppress(ProcessLookupError):
                        kill(pid, signal.SIGKILL)
                killed = True
            break
        if now >= next_look:
            watch.sample()
            _reap_orphans(pid)
            next_look = now + SAMPLE_S
        if now >= next_tell:
            with contextlib.suppress(Exception):  # a measurement must never cost the run
                watch.tell()
            next_tell = now + TELL_EVERY_S
        timeout = max(0.0, min(next_look, deadline) - now)
        try:
            if channel is not None:
                channel.poll(timeout)
            else:
                select.select([wake_read], [], [], timeout)
        except Exception:  # the channel failed: no post-mortem, the run goes on
            if channel is not None:
                channel.close()
            channel = None
    reaper.join()
    code = os.waitstatus_to_exitcode(statuses[0])
    return code, killed and code == -signal.SIGKILL, dumps  # killed by us, not merely ended as we looked


def _has_ended(pid: int) -> bool:
    """Whether our child has exited (reaped or not), without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # the reaper took it already
        return True


def _relay(source: int, target: int) -> None:
    """Copy the program's output from ``source`` to our ``target`` as it comes, every byte (while
    we live): under gVisor a write into the container's pipe with less room than it needs comes
    back short, and Python's unbuffered stdout drops the rest; a blocking pipe inside the sandbox
    takes every write whole. Should our side fail (the host stopped reading), the program gets
    EPIPE from then on, as it would have."""
    with os.fdopen(source, "rb", buffering=0) as pipe:
        while chunk := pipe.read(1 << 16):
            try:
                with STDERR_LOCK if target == 2 else contextlib.nullcontext():
                    _write_all(target, chunk)
            except OSError:
                return


def _drain(fd: int, into: "list[bytes]", cap: int = REPORT_BYTES) -> None:
    """Read ``fd`` to its end, keeping the first ``cap`` bytes (or a little more)."""
    kept = 0
    with os.fdopen(fd, "rb", buffering=0) as source:
        while chunk := source.read(1 << 16):
            if kept < cap:
                into.append(chunk)
                kept += len(chunk)


def _survey() -> "Survey":
    """Every regular file under /work (path, size, modification time), and the folders that could
    not be looked into, each with why. Called once nothing of the program's runs any more: the
    program (the same user) may have locked folders or files against us, so we give ourselves
    back the search and read permission it took (only if truly nothing else runs, so that no
    folder can turn into a link meanwhile); links are never followed."""
    found: list[tuple[str, int, int]] = []
    unseen: list[OmittedEntry] = []
    repair = not _others_alive()
    if repair:
        _let_owner(WORK, os.stat(WORK).st_mode, stat.S_IRWXU)
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            with os.scandir(os.path.join(WORK, relative)) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            unseen.append(_left_out(relative or ".", 0, f"its folder could not be listed: {exc.strerror}"))
            continue
        folders = []
        for entry in entries:
            path = f"{relative}/{entry.name}" if relative else entry.name
            status = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(status.st_mode):
                if len(os.fsencode(path)) > MAX_FOLDER_PATH_BYTES:
                    why = f"a folder whose path is over {MAX_FOLDER_PATH_BYTES} bytes: not looked into"
                    unseen.append(_left_out(path, 0, why))
                    continue
                if repair:
                    _let_owner(entry.path, status.st_mode, stat.S_IRWXU)
                folders.append(path)
            elif stat.S_ISREG(status.st_mode):
                if repair:
                    _let_owner(entry.path, status.st_mode, stat.S_IRUSR)
                found.append((path, status.st_size, status.st_mtime_ns))
        pending.extend(reversed(folders))  # depth first, in name order, like a sorted os.walk
    return found, unseen


def _let_owner(path: str, mode: int, wanted: int) -> None:
    """Give the owner (us: everything under /work is the sandbox user's) ``wanted`` back, on
    ``path`` itself, never through a link (where the kernel cannot say so, ``path`` was just
    seen not to be one, and nothing else runs to change that)."""
    if mode & wanted == wanted:
        return
    try:
        os.chmod(path, stat.S_IMODE(mode) | wanted, follow_symlinks=False)
    except NotImplementedError:
        with contextlib.suppress(OSError):
            os.chmod(path, stat.S_IMODE(mode) | wanted)
    except OSError:
        pass


def _left_out(path: str, size: int, reason: str, kind: str = "unreachable") -> "OmittedEntry":
    """A manifest entry for what does not come back: ``kind`` is ``cap`` (over the caps),
    ``unreadable`` or ``unreachable`` (in or behind a folder we could not look into)."""
    return {"path": path, "size": size, "reason": reason, "kind": kind}


def _open_regular(relative: str) -> "int | str":
    """A descriptor for a regular file under /work, never through a link; else why not."""
    try:
        fd = os.open(os.path.join(WORK, relative), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return f"the sandbox user cannot read it: {exc.strerror}"
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return "it is no longer a regular file"
    return fd


def _send_files(
    nonce: str, sent: "dict[str, tuple[int, int]]", survey: "Survey", caps: "ArtifactCaps"
) -> None:
    """Write the program's new and changed files to stdout as one block: a marked line with the
    manifest (the files that follow, in order; those left out, each with why; how many changed),
    then exactly their bytes. Files are opened before the manifest is written, so every byte the
    manifest promises follows it. Left-out entries that are not about the caps come first."""
    found, unseen = survey
    chosen: Chosen = []
    surprising: list[OmittedEntry] = list(unseen)
    over_caps: list[OmittedEntry] = []
    total = changed = 0
    for path, size, modified in found:
        if sent.get(path) == (size, modified):
            continue
        changed += 1
        if len(chosen) >= caps["max_files"]:
            over_caps.append(_left_out(path, size, f"only {caps['max_files']} files come back", "cap"))
        elif total + size > caps["max_bytes"]:
            reason = f"only {caps['max_bytes'] // 1024} KiB of files come back"
            over_caps.append(_left_out(path, size, reason, "cap"))
        else:
            opened = _open_regular(path)
            if isinstance(opened, str):
                surprising.append(_left_out(path, size, opened, "unreadable"))
            else:
                chosen.append((path, size, opened))
                total += size
    omitted = (surprising + over_caps)[: caps["max_listed"]]
    previews: dict[str, PreviewLine] = _safely(lambda: _previews(chosen), {})
    _write_block(FILES_PREFIX, nonce, chosen, omitted, changed + len(unseen), previews=previews)


def _previews(chosen: "Chosen") -> "dict[str, PreviewLine]":
    """The first rows of each Parquet file among ``chosen`` (the first MAX_PREVIEWS) as CSV, by
    path, written by PARQUET_TO_CSV in a process of its own; none without a Parquet file (then
    nothing is started) or without pyarrow, none that took too long or broke the rules."""
    parquet = [(path, fd) for path, _, fd in chosen if path.lower().endswith(".parquet")][:MAX_PREVIEWS]
    if not parquet:
        return {}
    places = [f"/proc/self/fd/{fd}" for _, fd in parquet]  # the very files that are sent
    command = [sys.executable, "-I", "-c", PARQUET_TO_CSV, str(PREVIEW_ROWS), str(PREVIEW_BYTES), *places]
    cap = MAX_PREVIEWS * PREVIEW_BYTES * 6 + 4096  # JSON's escapes at their worst
    written = bytearray()
    with subprocess.Popen(
        command,
        cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        pass_fds=[fd for _, fd in parquet],
    ) as converter:
        try:
            assert converter.stdout is not None
            output = converter.stdout.fileno()
            ready = select.poll()  # not select(): with many files open, the pipe's number may pass 1024
            ready.register(output, select.POLLIN)
            deadline = time.monotonic() + PREVIEW_WAIT_S
            while len(written) <= cap:
                left = deadline - time.monotonic()
                if left <= 0 or not ready.poll(left * 1000):
                    break
                chunk = os.read(output, 1 << 16)
                if not chunk:
                    break
                written += chunk
        finally:
            converter.kill()  # finished, out of time or bounds, or failed: gone either way
    found = json.loads(written) if written and len(written) <= cap else {}  # its one line, or none
    previews: dict[str, PreviewLine] = {}
    for place, (path, _) in enumerate(parquet):
        preview = found.get(str(place)) if isinstance(found, dict) else None
        csv = preview.get("csv") if isinstance(preview, dict) else None
        rows = preview.get("rows") if isinstance(preview, dict) else None
        if isinstance(csv, str) and len(csv.encode()) <= PREVIEW_BYTES and isinstance(rows, int):
            previews[path] = {"csv": csv, "rows": rows}
    return previews


def _send_snapshot(nonce: str, survey: "Survey", caps: "FileCaps") -> None:
    """Write all of /work as a second block (same layout) for the workspace to keep; if it is
    over the workspace's caps, the block holds no file and says why it was refused. What could
    not be read or looked into is listed, so the host can refuse a snapshot that would lose it."""
    found, unseen = survey
    total = sum(size for _, size, _ in found)
    if len(found) > caps["max_files"] or total > caps["max_bytes"]:
        reason = (
            f"/work holds {len(found)} files and {total // 1024} KiB, over the workspace's "
            f"{caps['max_files']} files or {caps['max_bytes'] // 1024} KiB"
        )
        _write_block(SNAPSHOT_PREFIX, nonce, [], [], len(found), refused=reason)
        return
    chosen: Chosen = []
    omitted: list[OmittedEntry] = list(unseen)
    for path, size, _ in found:
        opened = _open_regular(path)
        if isinstance(opened, str):
            omitted.append(_left_out(path, size, opened, "unreadable"))
        else:
            chosen.append((path, size, opened))
    _write_block(SNAPSHOT_PREFIX, nonce, chosen, omitted[: caps["max_files"]], len(found) + len(unseen))


def _send_state(nonce: str, written: "bytes | None", max_bytes: int) -> None:
    """What the notebook runner saved (the state, a newline, its report as the last line), as a
    third block (same layout: a report and a state "file"); or none, with why."""
    end = -1 if written is None else written.rfind(b"\n")
    view = memoryview(written or b"")
    report, data = view[end + 1 :], view[: max(end, 0)]  # views: no copy of a large state
    refused = None
    if written is None:
        refused = "the cell did not run to its end (it never started, or its time ran out)"
    elif end < 0:
        refused = "the cell ended without saving it (os._exit, a crash or a kill)"
    elif len(report) > REPORT_BYTES:
        refused = "the sandbox's report on it was too long"
    elif len(data) > max_bytes:
        refused = f"it is over the {max_bytes // 1024} KiB a state may hold"
    parts = [] if refused else [("report", report), ("state", data)]
    files: list[ManifestEntry] = [{"path": path, "size": len(part), "preview": None} for path, part in parts]
    manifest: Manifest = {"files": files, "omitted": [], "changed": len(parts), "refused": refused}
    _write_all(1, _marked_line(STATE_PREFIX, nonce, manifest))
    for _, part in parts:
        _write_all(1, part)


def _write_block(
    prefix: bytes,
    nonce: str,
    chosen: "Chosen",
    omitted: "list[OmittedEntry]",
    changed: int,
    refused: "str | None" = None,
    previews: "dict[str, PreviewLine] | None" = None,
) -> None:
    """A marked manifest line, then exactly the bytes of each chosen (already open) file."""
    files: list[ManifestEntry] = [
        {"path": path, "size": size, "preview": (previews or {}).get(path)} for path, size, _ in chosen
    ]
    manifest: Manifest = {"files": files, "omitted": omitted, "changed": changed, "refused": refused}
    _write_all(1, _marked_line(prefix, nonce, manifest))
    for _, remaining, fd in chosen:
        with os.fdopen(fd, "rb", buffering=0) as source:
            while remaining:
                # Nothing runs any more, so files cannot shrink; pad if one did, to keep the count.
                block = source.read(min(remaining, 1 << 16)) or bytes(min(remaining, 1 << 16))
                _write_all(1, block)
                remaining -= len(block)


def _write_all(fd: int, data: "bytes | memoryview") -> None:
    """Write every byte, whatever the program did to the descriptor's flags."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])  # made non-blocking (and full): wait for room


def _end_everything_else() -> None:
    """Kill every other process of ours (daemons the program left behind) before the end line,
    and wait until they are gone: none may read it off the output pipes (gVisor lets a process
    open ours through /proc), learn the nonce, and forge a second one."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)  # all we may signal but PID 1 and ourselves
    deadline = time.monotonic() + 5
    while _others_alive() and time.monotonic() < deadline:
        time.sleep(0.001)


def _others_alive() -> bool:
    """Whether a process other than PID 1 and us still runs (a zombie no longer can)."""
    for pid in _other_pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat_line:
                if stat_line.read().rpartition(b")")[2].split()[0] != b"Z":
                    return True
        except (OSError, IndexError):
            continue  # gone meanwhile
    return False


def _other_pids() -> "Iterator[int]":
    """Every process of the sandbox but PID 1 and us."""
    own = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, own):
            yield int(name)


def _reap_orphans(program: int = 0) -> None:
    """Collect every process the program left behind that has ended, but ``program`` itself (its
    reaper thread takes it). Orphans come to us where we are PID 1 (a pod has no init): no zombie
    may hold one of the run's process slots."""
    with contextlib.suppress(ChildProcessError):
        while True:
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if ended is None or ended.si_pid == program:
                return
            os.waitpid(ended.si_pid, 0)


def _usage(before: "Counters", after: "Counters", children_before: float, ran: "Ran | None") -> "UsageLine":
    """Peak memory and CPU time of the sandbox from its cgroup (every process; memory counts its
    tmpfs files and page cache, as the memory limit does); without one (gVisor), from the kernel's
    accounting of the program and the descendants that were waited for (RUSAGE_CHILDREN): CPU of
    them all, the peak of the largest one alone."""
    wall_s = ran["wall_s"] if ran else None
    cpu_ns = _grew(before["cpu_ns"], after["cpu_ns"])
    if cpu_ns is not None and after["memory_peak"] is not None:
        return {
            "peak_memory_bytes": after["memory_peak"],
            "cpu_s": round(cpu_ns / 1e9, 3),
            "wall_s": wall_s,
            "source": "cgroup",
        }
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "peak_memory_bytes": children.ru_maxrss * 1024,  # KiB on Linux
        "cpu_s": round(children.ru_utime + children.ru_stime - children_before, 3),
        "wall_s": wall_s,
        "source": "processes",
    }


def _safely(measure: "Callable[[], T]", otherwise: "T") -> "T":
    """What ``measure`` finds, or ``otherwise`` should the program have made it fail: a measurement
    must never cost the run its end line."""
    try:
        return measure()
    except Exception:
        return otherwise


def _oom_victim(before: "Counters", after: "Counters", ran: "Ran | None") -> "str | None":
    """Which process the kernel killed for memory, when it did and that can be known: the program
    (it died of SIGKILL we did not send) or else one of its children."""
    kills = _grew(before["oom_kills"], after["oom_kills"])
    if not kills or ran is None:
        return None
    killed = ran["exit_code"] == 128 + signal.SIGKILL and not ran["timed_out"]
    return "program" if killed else "child"


def main() -> None:
    ignored = _ignore_foreign_signals()  # first: a warm launcher waits before the program exists
    # Kubernetes puts its API server's address into every container, even with service links off:
    # the program has no business with it.
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("KUBERNETES_")}
    early = _early_runner(ignored, inherited)
    job = _read_job()
    nonce = job["nonce"]
    if ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        _fail("cannot protect the launcher's memory (prctl PR_SET_DUMPABLE)")
    sent = _unpack(_ArchiveInput(job["archive_bytes"]))
    # Read now, whether the program ever reads it or not: the engine's write must not wait on it.
    program_stdin = _ArchiveInput(job["stdin_bytes"]).read()
    saved_state = _ArchiveInput(job["state_bytes"]).read()  # a workspace's Python state, opaque here
    if early is not None and not early.takes(job, sent):
        early = None
    env = {**inherited, **job["env"]}
    installed = True
    if job["wheels"]:
        install = _install(job["wheels"])
        _write_all(1, _marked_line(INSTALLED_PREFIX, job["install_nonce"], install))
        _wait_until_read(1)
        installed = install["exit_code"] == 0
        env["PYTHONPATH"] = PACKAGES
        env["PATH"] = f"{PACKAGES}/bin:{env['PATH']}"
    os.chdir(WORK)
    before = _counters()
    watch = _Watch(before, _Teller(job["measured_nonce"]))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ran = _run(job, program_stdin, saved_state, env, ignored, watch, early) if installed else None
    watch.teller.stop()  # no measured line after this: the end line is the last word
    _end_everything_else()
    _reap_orphans()
    after = _counters()
    # Read before the Parquet previews' process (in _send_files) can add to it: the program's own.
    usage = _usage(before, after, children.ru_utime + children.ru_stime, ran)
    for fd in (1, 2):  # the program may have made them non-blocking (they are its own, or via /proc)
        os.set_blocking(fd, True)
    survey = _survey()
    _send_files(nonce, sent, survey, job["artifacts"])
    if job["snapshot"]:
        _send_snapshot(nonce, survey, job["snapshot"])
    state_job = job["notebook"]["state"] if job["notebook"] else None
    if state_job:
        _send_state(nonce, ran["state"] if ran else None, state_job["max_bytes"])
    dumps = ran["dumps"] if ran and ran["timed_out"] and job["post_mortem"] else None
    report: EndLine = {
        "exit_code": ran["exit_code"] if ran else None,
        "oom_kills": after["oom_kills"],
        "timed_out": ran["timed_out"] if ran else False,
        "return_value": ran["return_value"] if ran else None,
        "usage": usage,
        "measured": {
            "forks_refused": _grew(before["forks_refused"], after["forks_refused"]),
            "full": watch.full if ran else [],
            "at_file_size": _safely(lambda: _at_file_size(job["rlimits"]["fsize"], sent, survey), [])
            if ran
            else [],
            "open_files_peak": watch.open_files_peak if ran else None,
            "tasks_peak": watch.tasks_peak if ran else None,
        },
        "oom_victim": _oom_victim(before, after, ran),
        "post_mortem": None
        if dumps is None
        else {"dumps": dumps, "sources": _safely(lambda: _sources(dumps), {})},
    }
    line = _marked_line(END_PREFIX, nonce, report)
    _write_all(1, line)
    _write_all(2, line)
    sys.exit(FAILURE_EXIT if ran is None else ran["exit_code"])


if __name__ == "__main__":  # as python3 -c runs it; tests import it to read recorded cgroup files
    main()
