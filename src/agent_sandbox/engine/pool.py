"""The warm pool: sandboxes created and started ahead of time, each handed exactly one job.

A warm sandbox is a cold one started early: same options, same launcher waiting on stdin, so a
job in it gets exactly the limits, isolation and reporting of a cold start. It is removed after
its job like any other; nothing is ever reused. The pool refills in the background, replaces
sandboxes that waited longer than ``max_idle_s`` or died, and never makes a caller wait: when it
is empty, ``take`` returns None and the run starts cold. Any backend that can start a sandbox
ahead of time (a ``Starter``) can keep one.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from types import TracebackType
from typing import Generic, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup

from agent_sandbox.engine.spec import ContainerShape

log = logging.getLogger(__name__)

_RETRY_FIRST_S = 1.0
_RETRY_MAX_S = 30.0


class StartedSandbox(Protocol):
    """A sandbox started ahead of time, its launcher waiting for its one job."""

    @property
    def started_at(self) -> float:
        """When it was started (monotonic clock)."""

    def looks_alive(self) -> bool:
        """Whether it is still there to take a job."""


Started = TypeVar("Started", bound=StartedSandbox)


class Starter(Protocol[Started]):
    """A backend that starts sandboxes ahead of time and takes them from its ``pool``."""

    pool: WarmPool[Started] | None

    async def start_sandbox(self, shape: ContainerShape) -> Started:
        """Start a sandbox of ``shape`` that waits for a job."""

    async def remove(self, started: Started) -> None:
        """Remove it, shielded from cancellation."""


class WarmPool(Generic[Started]):
    """Keeps ``size`` started sandboxes of one shape ready; use as ``async with``."""

    def __init__(self, engine: Starter[Started], shape: ContainerShape, size: int, max_idle_s: float):
        self.engine = engine
        self.shape = shape
        self.size = size
        self.max_idle_s = max_idle_s
        self._idle: deque[Started] = deque()
        self._wanted = anyio.Event()  # set when a sandbox left the pool: refill
        self._changed = anyio.Event()  # set (then replaced) whenever a sandbox joined it
        self._group: TaskGroup | None = None

    @property
    def ready(self) -> int:
        """How many sandboxes wait for a job now."""
        return len(self._idle)

    def take(self, shape: ContainerShape) -> Started | None:
        """The oldest fresh, live sandbox of ``shape``; None (start cold) if there is none."""
        if shape != self.shape or self._group is None:
            return None
        self._wanted.set()
        while self._idle:
            started = self._idle.popleft()
            if self._usable(started):
                return started
            self._discard(started)
        return None

    def dispose(self, started: Started) -> None:
        """Remove a used sandbox in the background, so its caller need not wait for it."""
        self._discard(started)

    async def filled(self) -> None:
        """Wait until every place in the pool holds a ready sandbox."""
        while len(self._idle) < self.size:
            await self._changed.wait()

    async def __aenter__(self) -> WarmPool[Started]:
        if self.engine.pool is not None:
            raise RuntimeError("this engine already has a warm pool; give each pool its own engine")
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._keep_filled)
        self.engine.pool = self
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.engine.pool is self:
            self.engine.pool = None
        group, self._group = self._group, None
        assert group is not None
        group.cancel_scope.cancel()
        # The exception in flight (if any) came from the code that used the pool, not from the
        # pool's own tasks: it propagates by itself, unwrapped, once we return.
        await group.__aexit__(None, None, None)
        with anyio.CancelScope(shield=True):
            while self._idle:
                await self.engine.remove(self._idle.popleft())

    async def _keep_filled(self) -> None:
        retry_s = _RETRY_FIRST_S
        while True:
            self._wanted = anyio.Event()
            for started in [s for s in self._idle if not self._usable(s)]:
                self._idle.remove(started)
                self._discard(started)
            try:
                while len(self._idle) < self.size:
                    self._idle.append(await self.engine.start_sandbox(self.shape))
                    self._changed.set()
                    self._changed = anyio.Event()
                retry_s = _RETRY_FIRST_S
            except Exception as exc:  # never take the server down: runs fall back to cold starts
                log.warning("warm pool cannot start a sandbox (retrying in %.0f s): %s", retry_s, exc)
                await anyio.sleep(retry_s)
                retry_s = min(retry_s * 2, _RETRY_MAX_S)
                continue
            with anyio.move_on_after(self._seconds_until_one_expires()):
                await self._wanted.wait()

    def _seconds_until_one_expires(self) -> float:
        if not self._idle:
            return math.inf
        oldest = min(started.started_at for started in self._idle)
        return max(0.0, oldest + self.max_idle_s - time.monotonic()) + 0.01

    def _usable(self, started: Started) -> bool:
        fresh = time.monotonic() - started.started_at <= self.max_idle_s
        return fresh and started.looks_alive()

    def _discard(self, started: Started) -> None:
        assert self._group is not None
        self._group.start_soon(self.engine.remove, started)
