"""What a client sees of a run while it waits for the result: MCP progress notifications for each
stage, then the program's newest output as it is printed (at most ``MAX_RATE`` a second, each at
most ``MAX_CHARS`` long), and a heartbeat while the program is quiet, so a client that resets its
timeout on progress keeps waiting. Progress only ever grows, as the spec asks: the running stage
counts the time used of the run's time limit."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

from agent_sandbox.engine.base import Stage
from agent_sandbox.live_output import LiveOutput
from agent_sandbox.server.summary import escape_controls

Send = Callable[[float, float, str], Awaitable[None]]  # progress, total, message
# Progress as MCP reports it: installing and running are the same step (one or the other).
STEPS: dict[Stage, int] = {"resolving": 0, "queued": 1, "starting": 2, "installing": 3, "running": 3}
FINISHED = max(STEPS.values()) + 1
STAGE_MESSAGES: dict[Stage, str] = {
    "resolving": "fetching the requirements' wheels on the host",
    "queued": "queued",  # with how many wait ahead: "queued, 2 ahead"
    "starting": "creating a fresh container",
    "installing": "installing the requirements in the sandbox, then running the program",
    "running": "the program is running",
}
MIN_INTERVAL_S = 0.25  # between two notifications of output: at most 4 a second
POLL_S = 0.05  # how often new output is looked for
HEARTBEAT_S = 10.0  # a quiet program still shows it runs this often
MAX_CHARS = 1000  # of output in one notification: its newest lines
_NUDGE = 1e-6  # the least step up, for two notifications of one stage


class RunProgress:
    """One run's notifications to one client: ``stage`` as each starts, ``follow`` the output."""

    def __init__(self, send: Send, timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self._send = send
        self._timeout_s = timeout_s
        self._clock = clock
        self._last = -1.0
        self._running_since: float | None = None
        self._seen = 0  # bytes of output already sent

    async def stage(self, stage: Stage, detail: str = "") -> None:
        """A ``ProgressCallback``: the stage's message, with its detail."""
        if stage == "running":
            self._running_since = self._clock()
        await self._notify(STEPS[stage], STAGE_MESSAGES[stage] + (f", {detail}" if detail else ""))

    async def finished(self, output: LiveOutput) -> None:
        """The output not sent yet (printed just before the end), then "finished"."""
        await self._send_new(output, self._clock())
        await self._notify(FINISHED, "finished")

    async def follow(self, output: LiveOutput) -> None:
        """Send the newest output as it comes, and a heartbeat when there is none; until cancelled."""
        sent_at = self._clock() - MIN_INTERVAL_S  # the first output goes at once
        while True:
            await anyio.sleep(POLL_S)
            now = self._clock()
            if now - sent_at < MIN_INTERVAL_S:
                continue
            if await self._send_new(output, now):
                sent_at = now
            elif now - sent_at >= HEARTBEAT_S:
                await self._notify(self._running_step(now), self._heartbeat(now))
                sent_at = now

    async def _send_new(self, output: LiveOutput, now: float) -> bool:
        """Send what was printed since the last time, if anything was; whether it was."""
        text, printed = output.newest(self._seen, MAX_CHARS)
        if printed == self._seen:
            return False
        self._seen = printed
        await self._notify(self._running_step(now), "output: " + escape_controls(text))
        return True

    def _running_step(self, now: float) -> float:
        """Within the running step: the share of the time limit used so far; before it, the
        stage the run is at (the least step up)."""
        if self._running_since is None:
            return self._last
        used = (now - self._running_since) / self._timeout_s
        return STEPS["running"] + min(used, 0.99)

    def _heartbeat(self, now: float) -> str:
        if self._running_since is None:
            return "still preparing the run"
        return f"the program is running, {now - self._running_since:.0f} s of {self._timeout_s:g} s"

    async def _notify(self, progress: float, message: str) -> None:
        value = max(progress, self._last + _NUDGE)
        self._last = value
        await self._send(value, FINISHED, message)
