"""A run's output as it is printed: the newest lines of each stream, within a budget, and the
limits it has reached so far, fed by the engine's worker thread and read by whoever follows the
run (``run_status``, progress notifications, the run's record on disk)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from agent_sandbox.engine.base import LIMITS, STDERR, STDOUT

TAIL_BYTES = 8192  # kept per stream, and of the two interleaved


@dataclass(frozen=True)
class OutputSoFar:
    """The newest output of each stream and how much each has printed in all."""

    stdout: str
    stderr: str
    stdout_bytes: int
    stderr_bytes: int
    limits_hit: tuple[str, ...] = ()  # kinds of limit reached so far, as the launcher measured

    @property
    def printed(self) -> int:
        return self.stdout_bytes + self.stderr_bytes


class LiveOutput:
    """The last ``tail_bytes`` of stdout, of stderr, and of the two as they were interleaved."""

    def __init__(self, tail_bytes: int = TAIL_BYTES):
        self._lock = threading.Lock()
        self._cap = tail_bytes
        self._tails = {STDOUT: bytearray(), STDERR: bytearray()}
        self._both = bytearray()
        self._bytes = {STDOUT: 0, STDERR: 0}
        self._limits_hit: tuple[str, ...] = ()

    def feed(self, stream: int, data: bytes) -> None:
        """The engine's ``OutputCallback``: keep the newest bytes, and the limits reached."""
        if stream == LIMITS:
            self._limits_hit = tuple(data.decode("ascii", errors="replace").split(","))
            return
        with self._lock:
            for tail in (self._tails[stream], self._both):
                tail += data
                del tail[: -self._cap]
            self._bytes[stream] += len(data)

    def so_far(self, max_lines: int = 40) -> OutputSoFar:
        """The last ``max_lines`` lines of each stream, and the byte counts."""
        with self._lock:
            stdout, stderr = bytes(self._tails[STDOUT]), bytes(self._tails[STDERR])
            counts = dict(self._bytes)
        return OutputSoFar(
            _last_lines(stdout, max_lines),
            _last_lines(stderr, max_lines),
            counts[STDOUT],
            counts[STDERR],
            self._limits_hit,
        )

    def newest(self, since: int, max_chars: int) -> tuple[str, int]:
        """What both streams printed after ``since`` bytes in all (at most the last ``max_chars``,
        from a line's start where one fits), and the count to pass next time."""
        with self._lock:
            printed = self._bytes[STDOUT] + self._bytes[STDERR]
            fresh = bytes(self._both[-min(printed - since, len(self._both)) :]) if printed > since else b""
        text = fresh.decode("utf-8", errors="replace")
        if len(text) > max_chars:
            cut_at_line = text[-max_chars - 1] == "\n"
            text = text[-max_chars:]
            start = -1 if cut_at_line else text.find("\n")
            if 0 <= start < len(text) - 1:
                text = text[start + 1 :]
        return text, printed


def _last_lines(data: bytes, max_lines: int) -> str:
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    return "".join(lines[-max_lines:])
