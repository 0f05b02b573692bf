"""Who runs now and who waits: the server's run slots, each caller's fair share of them, and one
queue in arrival order.

A run takes a slot when one is free and its caller is under its share; otherwise it waits in
line, and the first waiter that may run gets the next slot that frees. Waiting is bounded twice:
by the server's queue and by the caller's own; past either, the run is refused as busy, saying
how many are running and waiting. Cancelling a waiting run takes it out of the line.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from agent_sandbox.errors import Busy

QueuedCallback = Callable[[int], Awaitable[None]]  # told how many wait ahead, as that changes


@dataclass(frozen=True)
class Share:
    """What one caller may hold: runs at once, and runs waiting beyond those."""

    running: int
    queued: int


@dataclass(frozen=True)
class Caller:
    """Who asks for a run: the owner of the workspaces it uses, and its share of the server
    (None: the whole server, as for the one client of a stdio server)."""

    id: str = "local"
    share: Share | None = None


@dataclass(eq=False)
class _Waiter:
    caller: Caller
    granted: bool = False
    moved: anyio.Event = field(default_factory=anyio.Event)  # set when the line or its turn changed


class Admission:
    """``slots`` runs at once and ``queue`` more waiting, each caller within its ``Share``."""

    def __init__(self, slots: int, queue: int):
        self.slots = slots
        self.queue = queue
        self._running: dict[str, int] = {}
        self._line: list[_Waiter] = []

    @property
    def running(self) -> int:
        """Runs holding a slot now."""
        return sum(self._running.values())

    @property
    def queued(self) -> int:
        """Runs waiting for a slot now."""
        return len(self._line)

    @contextlib.asynccontextmanager
    async def admit(self, caller: Caller, on_queued: QueuedCallback | None = None) -> AsyncIterator[None]:
        """Hold a slot for ``caller`` for the duration of the block, waiting in line for one if
        need be (``on_queued`` hears how many wait ahead), or raise ``Busy``."""
        if self._may_run(caller) and not any(waiter.caller.id == caller.id for waiter in self._line):
            self._take(caller.id)  # no await in between: nobody can take it meanwhile
        else:
            await self._wait_in_line(caller, on_queued)
        try:
            yield
        finally:
            self._release(caller.id)

    def _may_run(self, caller: Caller) -> bool:
        """A slot is free and ``caller`` is under its share."""
        return self.running < self.slots and self._within_share(caller)

    async def _wait_in_line(self, caller: Caller, on_queued: QueuedCallback | None) -> None:
        if len(self._line) >= self.queue:
            raise Busy(
                f"the sandbox is busy: {self.running} runs are in progress and {len(self._line)} "
                "are waiting, the most it queues; try again in a few seconds"
            )
        mine = sum(waiter.caller.id == caller.id for waiter in self._line)
        if caller.share is not None and mine >= caller.share.queued:
            raise Busy(
                f"this client is busy: it has {self._running.get(caller.id, 0)} runs in progress "
                f"and {mine} waiting, the most one client may queue; wait for some to finish first"
            )
        waiter = _Waiter(caller)
        self._line.append(waiter)
        try:
            told = None
            while not waiter.granted:
                ahead = self._ahead_of(waiter)
                if on_queued is not None and ahead != told:
                    told = ahead
                    await on_queued(ahead)
                if not waiter.granted:
                    await waiter.moved.wait()
                    waiter.moved = anyio.Event()
        except BaseException:  # cancelled while waiting: leave the line, or pass the slot on
            if waiter.granted:
                self._release(caller.id)
            else:
                self._line.remove(waiter)
                self._let_in()
            raise

    def _ahead_of(self, waiter: _Waiter) -> int:
        """Waiters in line before ``waiter`` that will run before it: its own caller's, and those
        no share holds back (another client's waiter held back by its share is passed)."""
        before = self._line[: self._line.index(waiter)]
        return sum(
            other.caller.id == waiter.caller.id or self._within_share(other.caller) for other in before
        )

    def _within_share(self, caller: Caller) -> bool:
        mine = self._running.get(caller.id, 0)
        return caller.share is None or mine < caller.share.running

    def _take(self, caller: str) -> None:
        self._running[caller] = self._running.get(caller, 0) + 1

    def _release(self, caller: str) -> None:
        self._running[caller] -= 1
        if not self._running[caller]:
            del self._running[caller]
        self._let_in()

    def _let_in(self) -> None:
        """Give free slots to the first waiters that may run, in line order, and tell every
        waiter that the line moved."""
        woken = list(self._line)
        for waiter in woken:
            if self.running >= self.slots:
                break
            if self._may_run(waiter.caller):
                self._line.remove(waiter)
                self._take(waiter.caller.id)
                waiter.granted = True
        for waiter in woken:
            waiter.moved.set()
