"""The warm pool's bookkeeping, with a starter that only counts (fast; the real engines' pools are
tests/integration/test_pool.py): it refills several at once, grows with the call rate up to its
maximum, and never makes a caller wait."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio
import pytest

from agent_sandbox.config import LimitSettings
from agent_sandbox.engine import pool as pool_module
from agent_sandbox.engine.pool import PARALLEL_STARTS, WarmPool
from agent_sandbox.engine.spec import ContainerShape
from agent_sandbox.models import LimitRequest
from agent_sandbox.sandbox import resolve_limits

pytestmark = pytest.mark.anyio

SHAPE = ContainerShape.of("img:minimal", resolve_limits(LimitRequest(), LimitSettings()), "")


@dataclass
class Started:
    started_at: float = field(default_factory=time.monotonic)

    def looks_alive(self) -> bool:
        return True


class CountingStarter:
    """Starts take ``start_s``; counts how many run at once, and what was removed."""

    def __init__(self, start_s: float = 0.05) -> None:
        self.pool: WarmPool[Started] | None = None
        self.start_s = start_s
        self.running = 0
        self.most_at_once = 0
        self.removed = 0
        self.starts = 0

    async def start_sandbox(self, shape: ContainerShape) -> Started:
        self.starts += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await anyio.sleep(self.start_s)
        finally:
            self.running -= 1
        return Started()

    async def remove(self, started: Started) -> None:
        self.removed += 1


async def test_it_fills_several_at_once_and_stays_at_its_size_when_calls_are_slow() -> None:
    starter = CountingStarter()
    async with WarmPool(starter, SHAPE, size=4, max_idle_s=60, max_size=8) as pool:
        with anyio.fail_after(5):
            await pool.filled()
        assert starter.most_at_once == PARALLEL_STARTS
        for used in range(3):
            taken = pool.take(SHAPE)
            assert taken is not None
            await anyio.sleep(0.1)
            assert starter.starts == 4 + used  # not while the run goes on ...
            pool.dispose(taken)  # ... but once it is over
            await anyio.sleep(0.2)  # 3 calls a second against 50 ms starts: no more needed
        assert pool.target == 4
    assert (starter.starts, starter.removed) == (7, 7)  # 3 taken, used and replaced; then the 4 ready


async def test_calls_faster_than_starts_grow_it_up_to_its_maximum() -> None:
    starter = CountingStarter(start_s=0.2)
    async with WarmPool(starter, SHAPE, size=2, max_idle_s=60, max_size=6) as pool:
        with anyio.fail_after(5):
            await pool.filled()
        taken = [pool.take(SHAPE) for _ in range(2)]  # back to back: a rate of thousands a second
        assert None not in taken
        assert pool.take(SHAPE) is None  # empty: the caller starts cold, never waits
        assert pool.target == 6
        with anyio.fail_after(5):
            while pool.ready < 6:
                await anyio.sleep(0.05)


async def test_a_surplus_goes_once_calls_slow_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "SURPLUS_IDLE_S", 0.3)
    monkeypatch.setattr(pool_module, "RATE_WINDOW_S", 0.2)
    starter = CountingStarter(start_s=0.1)
    async with WarmPool(starter, SHAPE, size=1, max_idle_s=60, max_size=4) as pool:
        with anyio.fail_after(5):
            await pool.filled()
        pool.take(SHAPE)
        pool.take(SHAPE)
        with anyio.fail_after(5):
            while pool.ready < 4:
                await anyio.sleep(0.02)
        with anyio.fail_after(5):  # no calls: the rate is gone, and so is the surplus
            while pool.ready > 1:
                await anyio.sleep(0.05)
        assert pool.target == 1


async def test_a_failing_start_is_retried_later_and_the_pool_lives_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "_RETRY_FIRST_S", 0.1)
    starter = CountingStarter()
    failures = 2
    start = starter.start_sandbox

    async def flaky(shape: ContainerShape) -> Started:
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("the engine refused")
        return await start(shape)

    monkeypatch.setattr(starter, "start_sandbox", flaky)
    async with WarmPool(starter, SHAPE, size=2, max_idle_s=60) as pool:
        with anyio.fail_after(5):
            await pool.filled()
        assert pool.ready == 2


async def test_a_pool_left_just_after_a_run_removes_everything_and_raises_nothing() -> None:
    starter = CountingStarter()
    async with WarmPool(starter, SHAPE, size=2, max_idle_s=60) as pool:
        with anyio.fail_after(5):
            await pool.filled()
        taken = pool.take(SHAPE)
        assert taken is not None
        pool.dispose(taken)  # wakes the refill as the pool ends
    assert starter.removed == starter.starts
