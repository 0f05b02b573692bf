"""Fair shares between clients: runs one client may have at once, and runs per minute."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

WINDOW_S = 60.0


class ClientLimitError(Exception):
    """A client asked for more than its share; the message says how long to wait."""


class ClientLimits:
    """Admits a client's run unless it already has ``max_concurrent`` runs, or started
    ``per_minute`` runs in the last minute (0: no rate limit)."""

    def __init__(self, max_concurrent: int, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.max_concurrent = max_concurrent
        self.per_minute = per_minute
        self._clock = clock
        self._running: dict[str, int] = defaultdict(int)
        self._starts: dict[str, deque[float]] = defaultdict(deque)

    @contextmanager
    def admit(self, client: str) -> Iterator[None]:
        """Hold one of ``client``'s places for the duration of a run, or raise ClientLimitError."""
        if self._running.get(client, 0) >= self.max_concurrent:
            raise ClientLimitError(
                f"this client already has {self.max_concurrent} runs in progress; wait for one to "
                "finish before starting another"
            )
        self._count_start(client)
        self._running[client] += 1
        try:
            yield
        finally:
            self._running[client] -= 1
            if not self._running[client]:
                del self._running[client]

    @property
    def tracked_clients(self) -> int:
        """How many clients the limits hold state for (running, or started within the window)."""
        return len(self._running.keys() | self._starts.keys())

    def _count_start(self, client: str) -> None:
        if not self.per_minute:
            return
        now = self._clock()
        self._forget_idle_clients(now)
        starts = self._starts[client]
        while starts and starts[0] <= now - WINDOW_S:
            starts.popleft()
        if len(starts) >= self.per_minute:
            wait_s = starts[0] + WINDOW_S - now
            raise ClientLimitError(
                f"this client started {self.per_minute} runs in the last minute, the most allowed; "
                f"try again in {wait_s:.0f} s"
            )
        starts.append(now)

    def _forget_idle_clients(self, now: float) -> None:
        """Drop clients whose last start left the window, so many passing clients cost nothing."""
        for client in [c for c, starts in self._starts.items() if starts[-1] <= now - WINDOW_S]:
            del self._starts[client]
