"""What every backend starts and how it tells its sandboxes apart: the launcher's command and
environment, the sandbox user, the file-size rlimit, and the owner stamped on each sandbox so a
later process can tell a crashed server's leftovers from a live server's runs."""

from __future__ import annotations

import binascii
import marshal
import os
import socket
import sys
import zlib
from pathlib import Path

SANDBOX_UID = 1000  # and gid: the unprivileged user every program runs as
WORKDIR = "/work"
LAUNCHER = (Path(__file__).parent / "launcher.py").read_text()
NOTEBOOK_RUNNER = (Path(__file__).parent / "notebook.py").read_text()


# The launcher compiled once here: a sandbox whose Python has this one's bytecode format (its
# cache tag, e.g. cpython-311) runs it without compiling 1,500 lines first, which cost 4-8 ms of
# CPU per sandbox (benchmarks/throughput.py's "the rest"); any other Python compiles the source.
LAUNCHER_BYTECODE = binascii.b2a_base64(
    zlib.compress(marshal.dumps(compile(LAUNCHER, "<launcher>", "exec")), 9), newline=False
).decode()
_BOOTSTRAP = """import sys
tag, bytecode, source = sys.argv[1:4]
del sys.argv[1:4]
if sys.implementation.cache_tag == tag:
    import binascii, marshal, zlib
    exec(marshal.loads(zlib.decompress(binascii.a2b_base64(bytecode))))
else:
    exec(compile(source, "<launcher>", "exec"))
"""


def launcher_command(relay_output: bool) -> list[str]:
    """What a sandbox starts: the launcher (-I -S: it must not import anything from /work or the
    image's site-packages), as bytecode with its source beside for another Python, given the
    notebook runner's source and whether the program's output is relayed, so that it can start
    the runner before the job comes (a warm cell then does not wait for python3 to start)."""
    launcher = [_BOOTSTRAP, sys.implementation.cache_tag, LAUNCHER_BYTECODE, LAUNCHER]
    return ["python3", "-I", "-S", "-c", *launcher, NOTEBOOK_RUNNER, "relay" if relay_output else "direct"]


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


def file_size_rlimit(file_size_mib: int) -> int:
    """RLIMIT_FSIZE for a limit of ``file_size_mib``: one byte over it. The kernel stops a file at
    exactly the rlimit, so the launcher can tell a file the limit stopped (that length) from one
    the program wrote to exactly the limit's size, and report the first as measured."""
    return file_size_mib * 1024 * 1024 + 1


def owner_id(pid: int | None = None) -> str:
    """Identifies a process (this one by default) on its sandboxes, to tell our leftovers from
    live runs: ``HOST/pidns:N:PID``. The PID namespace is part of it, so a server that shares
    the host's name but not its pids (a container run with ``--uts host``) never takes another's
    live sandboxes for orphans. Without /proc (macOS, Windows) N is 0."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/pidns:{namespace}:{pid or os.getpid()}"


def owner_place(owner: str) -> str:
    """The host and PID namespace part of an ``owner_id``: where its pid means something."""
    return owner.rpartition(":")[0]


def orphaned(owner: str, me: str) -> bool:
    """Whether ``owner`` is a process of this host and PID namespace (where ``me`` runs) that
    has ended: its sandboxes are leftovers no one will remove."""
    return (
        owner != me and owner_place(owner) == owner_place(me) and not process_alive(owner.rpartition(":")[2])
    )


def process_alive(pid: str) -> bool:
    """Whether process ``pid`` of this PID namespace exists (where the system cannot say: yes)."""
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
