"""How often one client may start runs. (How many it may have at once, and waiting, is the
sandbox's admission: see ``agent_sandbox.admission``.)"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable

from agent_sandbox.errors import RateLimited

WINDOW_S = 60.0


class StartRate:
    """Lets a client start ``per_minute`` runs in any minute (0: no limit)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self._clock = clock
        self._starts: dict[str, deque[float]] = defaultdict(deque)

    def count(self, client: str) -> None:
        """Count a start for ``client``, or raise RateLimited if it has had its share."""
        if not self.per_minute:
            return
        now = self._clock()
        self._forget_idle_clients(now)
        starts = self._starts[client]
        while starts and starts[0] <= now - WINDOW_S:
            starts.popleft()
        if len(starts) >= self.per_minute:
            wait_s = starts[0] + WINDOW_S - now
            raise RateLimited(
                f"this client started {self.per_minute} runs in the last minute, the most allowed; "
                f"try again in {wait_s:.0f} s"
            )
        starts.append(now)

    def refund(self, client: str) -> None:
        """Take back ``client``'s latest start: the run was refused after all (busy)."""
        if starts := self._starts.get(client):
            starts.pop()
            if not starts:  # no start left in the window: as if it had never started one
                del self._starts[client]

    @property
    def tracked_clients(self) -> int:
        """How many clients the limit holds state for (those that started within the window)."""
        return len(self._starts)

    def _forget_idle_clients(self, now: float) -> None:
        """Drop clients whose last start left the window, so many passing clients cost nothing."""
        for client in [c for c, starts in self._starts.items() if starts[-1] <= now - WINDOW_S]:
            del self._starts[client]
