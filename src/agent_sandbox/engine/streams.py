"""Reading a container's attach stream: Docker's multiplexed frames, and capped capture."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

STDOUT = 1
STDERR = 2
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
    """Keeps the first ``cap`` bytes of a stream and counts all of them."""

    cap: int
    seen: int = 0
    _kept: bytearray = field(default_factory=bytearray)

    def add(self, data: bytes) -> None:
        room = self.cap - len(self._kept)
        if room > 0:
            self._kept += data[:room]
        self.seen += len(data)

    @property
    def data(self) -> bytes:
        return bytes(self._kept)

    @property
    def truncated(self) -> bool:
        return self.seen > len(self._kept)
