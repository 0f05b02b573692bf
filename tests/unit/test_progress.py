"""MCP progress for a run, on a virtual clock: stages, the newest output at a bounded rate, a
heartbeat while the program is quiet, and progress values that only ever grow."""

from __future__ import annotations

import functools
import inspect
import itertools
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import pytest

from agent_sandbox.engine.base import STDERR, STDOUT
from agent_sandbox.live_output import LiveOutput
from agent_sandbox.server import progress as progress_module
from agent_sandbox.server.progress import (
    FINISHED,
    HEARTBEAT_S,
    MAX_CHARS,
    MIN_INTERVAL_S,
    POLL_S,
    STAGE_MESSAGES,
    RunProgress,
)

pytestmark = pytest.mark.anyio
OUTPUT = "output: "
EPSILON = 1e-9  # the virtual clock adds up floats


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Sent:
    at: float
    progress: float
    total: float
    message: str


@dataclass
class VirtualTime:
    """A clock that moves only when ``follow`` sleeps; things happen at the times scheduled."""

    now: float = 1000.0
    scheduled: list[tuple[float, Callable[[], object]]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    stop_at: float = float("inf")
    scope: anyio.CancelScope | None = None

    def __call__(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[[], object]) -> None:
        """Do ``action`` (awaited if it is a coroutine) at the first tick at or after ``when``."""
        self.scheduled.append((when, action))

    async def sleep(self, seconds: float) -> None:
        self.now = round(self.now + seconds, 9)  # no drift: ticks land on the times due
        due = [(when, action) for when, action in self.scheduled if when <= self.now + EPSILON]
        for entry in due:
            self.scheduled.remove(entry)
            done = entry[1]()
            if inspect.isawaitable(done):
                await done
        if self.now >= self.stop_at - EPSILON and self.scope is not None:
            self.scope.cancel()
        await anyio.lowlevel.checkpoint()

    async def send(self, progress: float, total: float, message: str) -> None:
        self.sent.append(Sent(self.now, progress, total, message))

    async def follow(self, progress: RunProgress, output: LiveOutput, until: float) -> None:
        """``progress.follow(output)`` until the clock reads ``until``."""
        self.stop_at = until
        with anyio.CancelScope() as self.scope:
            await progress.follow(output)

    def outputs(self) -> list[Sent]:
        return [sent for sent in self.sent if sent.message.startswith(OUTPUT)]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    clock = VirtualTime()
    monkeypatch.setattr(progress_module, "anyio", types.SimpleNamespace(sleep=clock.sleep))
    return clock


def strictly_increasing(values: list[float]) -> bool:
    return all(later > earlier for earlier, later in itertools.pairwise(values))


async def test_progress_only_grows_across_stages_output_heartbeats_and_the_end(clock: VirtualTime) -> None:
    progress = RunProgress(clock.send, timeout_s=60, clock=clock)
    output = LiveOutput()
    await progress.stage("queued", "2 ahead")
    await progress.stage("queued", "1 ahead")  # the same step twice
    await progress.stage("starting")
    await progress.stage("installing")
    start = clock.now
    clock.at(start + 1, lambda: output.feed(STDOUT, b"pip output\n"))  # before "running": step 3 + 0
    clock.at(start + 2, lambda: progress.stage("running"))  # step 3 again
    clock.at(start + 3, lambda: output.feed(STDOUT, b"tick\n"))
    clock.at(start + 4, lambda: output.feed(STDERR, b"warn\n"))
    await clock.follow(progress, output, until=start + 4 + HEARTBEAT_S + 1)  # quiet at the end
    await progress.finished(output)

    messages = [sent.message for sent in clock.sent]
    assert messages[:4] == [
        STAGE_MESSAGES["queued"] + ", 2 ahead",
        STAGE_MESSAGES["queued"] + ", 1 ahead",
        STAGE_MESSAGES["starting"],
        STAGE_MESSAGES["installing"],
    ]
    assert [m for m in messages if m.startswith(OUTPUT)] == [
        OUTPUT + "pip output\n",
        OUTPUT + "tick\n",
        OUTPUT + "warn\n",
    ]
    assert any(m.startswith("the program is running, ") for m in messages)
    assert messages[-1] == "finished"
    values = [sent.progress for sent in clock.sent]
    assert strictly_increasing(values), values
    assert values[-1] == FINISHED
    assert all(sent.total == FINISHED for sent in clock.sent)


async def test_output_goes_at_once_then_at_most_once_per_interval_and_only_what_is_new(
    clock: VirtualTime,
) -> None:
    progress = RunProgress(clock.send, timeout_s=60, clock=clock)
    output = LiveOutput()
    await progress.stage("running")
    start = clock.now
    printed = []
    for i in range(100):  # a line every 20 ms for two seconds
        line = f"line {i}\n"
        printed.append(line)
        clock.at(start + 0.02 * i, functools.partial(output.feed, STDOUT, line.encode()))
    await clock.follow(progress, output, until=start + 3)

    sent = clock.outputs()
    assert sent[0].at - start <= POLL_S + EPSILON  # the first line does not wait out a rate window
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(sent)]
    assert min(gaps) >= MIN_INTERVAL_S - EPSILON
    assert len(sent) <= 2 / MIN_INTERVAL_S + 1
    assert "".join(s.message.removeprefix(OUTPUT) for s in sent) == "".join(printed)  # no repeat, no gap


async def test_finished_first_sends_the_output_the_rate_held_back(clock: VirtualTime) -> None:
    progress = RunProgress(clock.send, timeout_s=60, clock=clock)
    output = LiveOutput()
    start = clock.now
    clock.at(start + 1, lambda: output.feed(STDOUT, b"first\n"))
    clock.at(start + 1.1, lambda: output.feed(STDOUT, b"last\n"))  # within the rate window of "first"
    await clock.follow(progress, output, until=start + 1.15)
    assert [sent.message for sent in clock.sent] == [OUTPUT + "first\n"]
    await progress.finished(output)
    assert [sent.message for sent in clock.sent] == [OUTPUT + "first\n", OUTPUT + "last\n", "finished"]
    assert strictly_increasing([sent.progress for sent in clock.sent])


async def test_finished_with_nothing_held_back_sends_only_finished(clock: VirtualTime) -> None:
    progress = RunProgress(clock.send, timeout_s=60, clock=clock)
    output = LiveOutput()
    clock.at(clock.now + 0.5, lambda: output.feed(STDERR, b"only\n"))
    await clock.follow(progress, output, until=clock.now + 1)
    await progress.finished(output)
    assert [sent.message for sent in clock.sent] == [OUTPUT + "only\n", "finished"]


async def test_a_burst_over_max_chars_sends_its_newest_lines(clock: VirtualTime) -> None:
    progress = RunProgress(clock.send, timeout_s=60, clock=clock)
    output = LiveOutput()
    burst = "".join(f"row {i:04d}\n" for i in range(300))  # 3000 characters at once
    clock.at(clock.now + 0.1, lambda: output.feed(STDOUT, burst.encode()))
    await clock.follow(progress, output, until=clock.now + 1)
    [sent] = clock.outputs()
    text = sent.message.removeprefix(OUTPUT)
    assert len(text) <= MAX_CHARS
    assert text.startswith("row ")
    assert burst.endswith(text)


async def test_a_quiet_program_gets_a_heartbeat_every_heartbeat_s(clock: VirtualTime) -> None:
    progress = RunProgress(clock.send, timeout_s=60, clock=clock)
    await progress.stage("running")
    start = clock.now
    await clock.follow(progress, LiveOutput(), until=start + 2.5 * HEARTBEAT_S)
    first, second = clock.sent[1:]
    # The rate window starts open (so that the first output goes at once): the first beat may come
    # up to MIN_INTERVAL_S early, never late.
    assert HEARTBEAT_S - MIN_INTERVAL_S - EPSILON <= first.at - start <= HEARTBEAT_S + EPSILON
    assert second.at - first.at == pytest.approx(HEARTBEAT_S)
    assert first.message == f"the program is running, {first.at - start:.0f} s of 60 s"
    assert first.progress == pytest.approx(3 + (first.at - start) / 60)  # the share of the time limit used


async def test_output_puts_the_heartbeat_off(clock: VirtualTime) -> None:
    progress = RunProgress(clock.send, timeout_s=60, clock=clock)
    output = LiveOutput()
    start = clock.now
    clock.at(start + 3, lambda: output.feed(STDOUT, b"hello\n"))
    await clock.follow(progress, output, until=start + HEARTBEAT_S + 4)
    hello, beat = clock.sent  # no beat 10 s after the start: "hello" came 3 s in
    assert hello.message == OUTPUT + "hello\n"
    assert beat.message == "still preparing the run"  # quiet since "hello", and no stage yet
    assert beat.at - hello.at == pytest.approx(HEARTBEAT_S)
