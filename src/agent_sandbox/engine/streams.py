"""Reading a container's attach stream: Docker's multiplexed frames, and capped capture."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

STDOUT = 1
STDERR = 2
CUT_LINE = b"\n[agent-sandbox: %d bytes cut here]\n"
_HEADER = struct.Struct(">BxxxL")


class FrameDecoder:
    """Splits Docker's non-TTY attach stream (8-byte header, then payload) into frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """Add bytes from the socket; return the complete ``(stream, payload)`` frames."""
        self._buffer += chunk
        frames = []
        while len(self._buffer) >= _HEADER.size:
            stream, size = _HEADER.unpack_from(self._buffer)
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            frames.append((stream, bytes(self._buffer[_HEADER.size : end])))
            del self._buffer[:end]
        return frames


@dataclass
class Capture:
    """Keeps at most ``cap`` bytes of a stream, the first three quarters and the last quarter,
    and counts all of them. The end matters: that is where a traceback is."""

    cap: int
    seen: int = 0
    _head: bytearray = field(default_factory=bytearray)
    _tail: bytearray = field(default_factory=bytearray)

    @property
    def _tail_cap(self) -> int:
        return self.cap // 4

    def add(self, data: bytes) -> None:
        self.seen += len(data)
        room = self.cap - self._tail_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        self._tail += data
        if len(self._tail) > 2 * self._tail_cap:  # trim now and then, not on every write
            del self._tail[: len(self._tail) - self._tail_cap]

    @property
    def truncated(self) -> bool:
        return self.seen > self.cap

    @property
    def data(self) -> bytes:
        """What was kept; where bytes were cut, a line says how many."""
        if not self.truncated:
            return bytes(self._head + self._tail)
        tail = self._tail[len(self._tail) - self._tail_cap :] if self._tail_cap else b""
        cut = self.seen - len(self._head) - len(tail)
        return bytes(self._head) + CUT_LINE % cut + bytes(tail)


END_PREFIX = b"\x00agent-sandbox-end "
INSTALLED_PREFIX = b"\x00agent-sandbox-installed "


class MarkedLine:
    """Finds one line the launcher marked with ``prefix`` and the host's nonce in an output
    stream: ``prefix + nonce + " " + report + "\\n"``. The nonce is the host's secret for this
    job, so program output can never pass for the line. ``feed`` returns the bytes before the
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


class EndOfJob(MarkedLine):
    """The launcher's end-of-job line in one output stream.

    When the program has exited, the launcher writes the line to stdout and to stderr. Within one
    stream the program's bytes all come before it, so once both streams have shown it, all the
    program's output is in, without waiting for the engine to tear the container down. What
    follows it (a lingering grandchild's output) is not the program's and is dropped.
    """

    def __init__(self, nonce: str):
        super().__init__(END_PREFIX, nonce)


class InstallDone(MarkedLine):
    """The launcher's install report, the first line on stdout of a run with requirements; the
    program starts, and its time limit begins, only after it."""

    def __init__(self, nonce: str):
        super().__init__(INSTALLED_PREFIX, nonce)


FILES_PREFIX = b"\x00agent-sandbox-files "
SNAPSHOT_PREFIX = b"\x00agent-sandbox-snapshot "
# Why a file did not come back: over the caps, unreadable, or behind a folder not looked into.
OMITTED_KINDS = frozenset({"cap", "unreadable", "unreachable"})


class FilesBlock:
    """The launcher's files block on stdout, written after the program and everything it started
    have ended, before the end-of-job line: a marked line with a JSON manifest, then exactly the
    bytes of the files it lists. ``feed`` returns what is not part of the block. A workspace run
    has a second one, the snapshot, with its own prefix."""

    def __init__(self, nonce: str, max_files: int, max_bytes: int, prefix: bytes = FILES_PREFIX):
        self.header = MarkedLine(prefix, nonce)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.manifest: dict[str, Any] | None = None
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
            self._expected = sum(int(entry["size"]) for entry in self.manifest["files"])
            data = self.header.rest
        wanted = self._expected - len(self.data)
        self.data += data[:wanted]
        return before + data[wanted:]

    def flush(self) -> bytes:
        """At end of stream: bytes held back as a possible start of the header were the program's."""
        return self.header.flush() if self.manifest is None else b""


def _manifest(line: bytes, max_files: int, max_bytes: int) -> dict[str, Any]:
    """The manifest, checked against what the job allowed; one that breaks the rules counts as
    empty (what follows it is then treated as output, within the output caps)."""
    rejected = {
        "path": ".",
        "size": 0,
        "reason": "the sandbox's list of files broke the job's rules",
        "kind": "unreachable",
    }
    empty: dict[str, Any] = {"files": [], "omitted": [rejected], "changed": 0}
    try:
        raw = json.loads(line)
        files: list[dict[str, Any]] = [{"path": str(e["path"]), "size": int(e["size"])} for e in raw["files"]]
        omitted: list[dict[str, Any]] = [
            {
                "path": str(e["path"]),
                "size": int(e["size"]),
                "reason": str(e["reason"]),
                "kind": e["kind"] if e.get("kind") in OMITTED_KINDS else "cap",
            }
            for e in raw["omitted"][:max_files]
        ]
        changed = int(raw["changed"])
    except (ValueError, KeyError, TypeError):
        return empty
    sizes: list[int] = [entry["size"] for entry in files]
    if len(files) > max_files or min(sizes, default=0) < 0 or sum(sizes) > max_bytes:
        return empty
    return {"files": files, "omitted": omitted, "changed": max(changed, len(files) + len(omitted))}
