"""The first step inside every sandbox container; its source is passed to ``python3 -c``.

Standard input carries ``<size>\\n``, then a tar of exactly ``size`` bytes, then the caller's
stdin. The launcher reads exactly the header and the tar with unbuffered reads, unpacks
regular files and folders under /work (re-checking every name: defence in depth), and
replaces itself with ``python3 ENTRYPOINT ARGS...``, which inherits the rest of stdin.

Self-contained and standard-library only: it runs on the sandbox image's Python.
"""

import io
import os
import sys
import tarfile

WORK = "/work"
FAILURE_EXIT = 125


def _fail(message: str) -> None:
    sys.stderr.write(f"agent-sandbox launcher: {message}\n")
    sys.exit(FAILURE_EXIT)


def _read_exactly(size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(0, min(size, 1 << 20))
        if not chunk:
            _fail("standard input ended before the files did")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_header() -> int:
    header = b""
    while not header.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte or len(header) > 20:
            _fail("missing archive header")
        header += byte
    return int(header)


def _target(name: str) -> str:
    parts = name.split("/")
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        _fail(f"refusing archive member {name!r}")
    return os.path.join(WORK, *parts)


def _unpack(data: bytes) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar.getmembers():
            target = _target(member.name)
            if member.isdir():
                os.makedirs(target, mode=0o755, exist_ok=True)
            elif member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
                with open(target, "xb") as out:
                    out.write(source.read())
            else:
                _fail(f"refusing archive member {member.name!r}: not a file or folder")


def main() -> None:
    entrypoint, args = sys.argv[1], sys.argv[2:]
    _unpack(_read_exactly(_read_header()))
    os.chdir(WORK)
    os.execvp("python3", ["python3", entrypoint, *args])


main()
