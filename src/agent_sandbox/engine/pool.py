"""The warm pool: sandboxes created and started ahead of time, each handed exactly one job.

A warm sandbox is a cold one started early: same options, same launcher waiting on stdin, so a
job in it gets exactly the limits, isolation and reporting of a cold start. It is removed after
its job like any other; nothing is ever reused. The pool never makes a caller wait: when it is
empty, ``take`` returns None and the run starts cold. It refills in the background once a run
is over (at once if it ran dry), several sandboxes at once, and replaces those that waited
longer than ``max_idle_s`` or died. It keeps
``size`` ready, and more when calls come faster than one sandbox takes to start (twice what the
recent call rate uses up while one starts, at most ``max_size``); a surplus that waits
``SURPLUS_IDLE_S`` unused is removed. Any backend that can start a sandbox ahead of time (a
``Starter``) can keep one.
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
PARALLEL_STARTS = 2  # starts under way at once: more only queue in the engine on a small machine
RATE_SAMPLES = 16  # the recent call rate is measured over the last this many takes ...
RATE_WINDOW_S = 10.0  # ... that came within this many seconds
SURPLUS_IDLE_S = 30.0  # a sandbox beyond what the call rate needs goes after waiting this long


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
    """Keeps ``size`` (up to ``max_size``) started sandboxes of one shape ready; use as ``async with``."""

    def __init__(
        self,
        engine: Starter[Started],
        shape: ContainerShape,
        size: int,
        max_idle_s: float,
        max_size: int | None = None,
    ):
        self.engine = engine
        self.shape = shape
        self.size = size
        self.max_size = max(size, max_size or size)
        self.max_idle_s = max_idle_s
        self._idle: deque[Started] = deque()
        self._starting = 0  # starts under way, or waiting for a place among PARALLEL_STARTS
        self._parallel = anyio.CapacityLimiter(PARALLEL_STARTS)
        self._takes: deque[float] = deque(maxlen=RATE_SAMPLES)  # when runs asked for one
        self._start_s = 0.5  # how long a start takes, as recently measured
        self._retry_s = _RETRY_FIRST_S
        self._retry_at = 0.0  # after a failed start, no new one before this
        self._wanted = anyio.Event()  # set when the pool should look again: a take, a start's end
        self._changed = anyio.Event()  # set (then replaced) whenever a sandbox joined it
        self._group: TaskGroup | None = None

    @property
    def ready(self) -> int:
        """How many sandboxes wait for a job now."""
        return len(self._idle)

    @property
    def target(self) -> int:
        """How many to keep ready: ``size``, or twice what the recent call rate uses up while a
        sandbox starts, at most ``max_size``."""
        now = time.monotonic()
        recent = [taken for taken in self._takes if now - taken <= RATE_WINDOW_S]
        if len(recent) < 2:
            return self.size
        rate = (len(recent) - 1) / max(recent[-1] - recent[0], 1e-3)
        return min(self.max_size, max(self.size, math.ceil(2 * rate * self._start_s)))

    def take(self, shape: ContainerShape) -> Started | None:
        """The oldest fresh, live sandbox of ``shape``; None (start cold) if there is none."""
        if shape != self.shape or self._group is None:
            return None
        self._takes.append(time.monotonic())
        while self._idle:
            started = self._idle.popleft()
            if self._usable(started):
                if not self._idle:  # ran dry: refill now rather than after this run
                    self._wanted.set()
                return started
            self._discard(started)
        self._wanted.set()  # the caller starts cold; refill at once
        return None

    def dispose(self, started: Started) -> None:
        """Remove a used sandbox in the background, so its caller need not wait for it, and refill
        the pool: after the run rather than during it, whose CPU a start beside it would take."""
        self._discard(started)
        self._wanted.set()

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
        group = self._group
        assert group is not None
        group.cancel_scope.cancel()
        # The exception in flight (if any) came from the code that used the pool, not from the
        # pool's own tasks: it propagates by itself, unwrapped, once we return. Until then the
        # group stays: a task woken as it ends may still hand it a removal (shielded) or a start.
        await group.__aexit__(None, None, None)
        self._group = None
        with anyio.CancelScope(shield=True):
            while self._idle:
                await self.engine.remove(self._idle.popleft())

    async def _keep_filled(self) -> None:
        assert self._group is not None
        while True:
            self._wanted = anyio.Event()
            now = time.monotonic()
            for started in [s for s in self._idle if not self._usable(s)]:
                self._idle.remove(started)
                self._discard(started)
            target = self.target
            while len(self._idle) > target and now - self._idle[0].started_at > SURPLUS_IDLE_S:
                self._discard(self._idle.popleft())
            if now >= self._retry_at:
                for _ in range(target - len(self._idle) - self._starting):
                    self._starting += 1
                    self._group.start_soon(self._start_one)
            with anyio.move_on_after(self._seconds_until_next_look(now)):
                await self._wanted.wait()

    async def _start_one(self) -> None:
        try:
            async with self._parallel:
                began = time.monotonic()
                started = await self.engine.start_sandbox(self.shape)
        except Exception as exc:  # never take the server down: runs fall back to cold starts
            log.warning("warm pool cannot start a sandbox (retrying in %.0f s): %s", self._retry_s, exc)
            self._retry_at = time.monotonic() + self._retry_s
            self._retry_s = min(self._retry_s * 2, _RETRY_MAX_S)
            return
        finally:
            self._starting -= 1
            self._wanted.set()
        self._start_s += (time.monotonic() - began - self._start_s) / 4
        self._retry_s = _RETRY_FIRST_S
        self._idle.append(started)
        self._changed.set()
        self._changed = anyio.Event()

    def _seconds_until_next_look(self, now: float) -> float:
        """Until a sandbox expires, a surplus may go, or a failed start may be tried again."""
        times = [self._retry_at] if self._retry_at > now else []
        if self._idle:
            oldest = min(started.started_at for started in self._idle)
            times.append(oldest + self.max_idle_s)
            if len(self._idle) > self.size:  # a surplus once the call rate drops: look each second
                times.append(max(oldest + SURPLUS_IDLE_S, now + 1.0))
        return max(0.0, min(times, default=math.inf) - now) + 0.01

    def _usable(self, started: Started) -> bool:
        fresh = time.monotonic() - started.started_at <= self.max_idle_s
        return fresh and started.looks_alive()

    def _discard(self, started: Started) -> None:
        assert self._group is not None
        self._group.start_soon(self.engine.remove, started)
