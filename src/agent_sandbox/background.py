"""Background runs: started by one call, which returns at once, and followed by others (status
with the output so far, the result, a cancel). Each run is a task of this object's task group,
so runs live as long as the server does (the ``async with`` block); its record, output and
result are in the ``RunStore``, so they outlive the server. Caps: ``runs.max_background_runs``
in flight on this server and ``max_background_runs_per_client``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from agent_sandbox.config import RunSettings
from agent_sandbox.engine.base import OutputCallback, ProgressCallback, Stage
from agent_sandbox.errors import RunError, SandboxError, describe
from agent_sandbox.live_output import LiveOutput
from agent_sandbox.models import RunResult
from agent_sandbox.run_store import RunRecord, RunState, RunStore

log = logging.getLogger(__name__)
# The work of one run, given where its output and stages go; the caller's run with its audit
# record and metrics (server/run_tools.py), or the command line's.
Work = Callable[[OutputCallback, ProgressCallback], Awaitable[RunResult]]
SAVE_EVERY_S = 1.0  # the output so far goes to disk at most this often
EXPIRE_EVERY_S = 60.0  # expired results are removed at least this often
# How often a run looks for a cancel asked by another process, and a wait for a run of another
# process looks at its record.
LOOK_EVERY_S = 0.25
CANCELLED_NOTE = "cancelled: the run was stopped and its sandbox removed"
FAILED_NOTE = "the server failed while running it (its log says how); start it again"
UNSTORED_NOTE = "the run ended, but the server could not store its result (its log says why); start it again"
STOPPED_NOTE = (
    "the server was stopped while this run was in flight: the run was stopped and its sandbox "
    "removed; the output below is what it had printed by then. Start it again"
)


@dataclass
class _Live:
    """A run this process is running."""

    output: LiveOutput
    scope: anyio.CancelScope
    done: anyio.Event
    stage: str = "queued"


class BackgroundRuns:
    """This process's background runs, and the door to every run in the store."""

    def __init__(self, settings: RunSettings, run_slots: int | None = None, store: RunStore | None = None):
        """``run_slots``: the engine's (``engine.max_concurrent_runs``); background runs, which
        may last an hour, always leave one of them to foreground calls."""
        self.settings = settings
        self.run_slots = run_slots
        self.store = store or RunStore(settings)
        self._live: dict[str, _Live] = {}
        self._group: TaskGroup | None = None
        self._housekeeping: anyio.CancelScope | None = None

    async def __aenter__(self) -> BackgroundRuns:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._housekeeping = anyio.CancelScope()
        self._group.start_soon(self._expire_every, self._housekeeping, EXPIRE_EVERY_S)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._group is not None
        assert self._housekeeping is not None
        self._housekeeping.cancel()
        for live in self._live.values():
            live.scope.cancel()
        group, self._group = self._group, None
        # Every task was just told to end: wait for them, and let whatever ended the block (a
        # KeyboardInterrupt from SIGTERM, say) go on as itself, not wrapped in a group.
        await group.__aexit__(None, None, None)

    @property
    def offered(self) -> bool:
        """Background runs can start here at all (the block is open, no cap is 0)."""
        return self._group is not None and self._cap > 0

    @property
    def _cap(self) -> int:
        """Runs in flight at most: ``max_background_runs``, leaving one run slot to foreground calls."""
        cap = self.settings.max_background_runs
        return cap if self.run_slots is None else min(cap, self.run_slots - 1)

    def refusal(self, owner: str) -> RunError | None:
        """Why ``owner`` may not start a background run now, if it may not: the cap it is over."""
        wait = "wait for one to end (run_result) or cancel one (run_cancel)"
        if self._group is None:
            return RunError(
                "this server has no lifetime for background runs (an embedding: open its "
                "BackgroundRuns with `async with` and pass it to build_server); run it in the foreground"
            )
        slots = self.run_slots is not None and self._cap < self.settings.max_background_runs
        cap = f"runs.max_background_runs = {self.settings.max_background_runs}" + (
            f", and one fewer than engine.max_concurrent_runs = {self.run_slots}: a run slot stays for "
            "foreground calls"
            if slots
            else ""
        )
        if self._cap == 0:
            return RunError(f"background runs are off on this server ({cap}); run it in the foreground")
        everyone = self.store.in_flight(None)
        if everyone >= self._cap:
            return RunError(
                f"{everyone} background runs are in flight on this server's store (runs.dir), its cap "
                f"({cap}); {wait}"
            )
        own = self.store.in_flight(owner)
        if own >= self.settings.max_background_runs_per_client:
            return RunError(
                f"this client already has {own} background runs in flight, its cap "
                f"(runs.max_background_runs_per_client = {self.settings.max_background_runs_per_client}); "
                f"{wait}"
            )
        return None

    def start(self, owner: str, tool: str, timeout_s: float, work: Work) -> RunRecord:
        """Start ``work`` as ``owner``'s background run; ``RunError`` names the cap it is over."""
        refusal = self.refusal(owner)
        if refusal is not None:
            raise refusal
        assert self._group is not None
        record = self.store.create(owner, tool, timeout_s)
        live = _Live(LiveOutput(), anyio.CancelScope(), anyio.Event())
        self._live[record.id] = live
        self._group.start_soon(self._run, record.id, live, work)
        return record

    def status(self, run_id: str, owner: str | None) -> RunRecord:
        """The run's record, with the output so far (fresh from memory while this process runs it)."""
        record = self.store.get(run_id, owner)
        live = self._live.get(run_id)
        if live is not None and record.in_flight:
            return _with(record, live)
        return record

    def stage(self, run_id: str) -> str | None:
        """Where a run of this process is: queued (and how many wait ahead), starting, running."""
        live = self._live.get(run_id)
        return live.stage if live is not None else None

    def runs(self, owner: str | None) -> list[RunRecord]:
        return [
            _with(record, self._live[record.id]) if record.id in self._live and record.in_flight else record
            for record in self.store.runs(owner)
        ]

    async def wait(self, run_id: str, owner: str | None, wait_s: float) -> RunRecord:
        """The run's record once it has ended, or as it is after ``wait_s`` seconds."""
        record = self.status(run_id, owner)
        with anyio.move_on_after(wait_s):
            while record.in_flight:
                live = self._live.get(run_id)
                if live is not None:
                    await live.done.wait()
                else:  # another process runs it: its record on disk says when it ends
                    await anyio.sleep(LOOK_EVERY_S)
                record = self.status(run_id, owner)
        return record

    async def cancel(self, run_id: str, owner: str | None) -> RunRecord:
        """Stop the run and remove its sandbox; its record once that is done (at most a few
        seconds), or as it stands when another process runs it."""
        record = self.store.ask_to_cancel(run_id, owner)
        live = self._live.get(run_id)
        if live is not None:
            live.scope.cancel()
            await live.done.wait()
            return self.store.get(run_id, owner)
        return await self.wait(run_id, owner, 10.0) if record.in_flight else record

    async def _run(self, run_id: str, live: _Live, work: Work) -> None:
        """Run ``work`` and keep its record; never raises: a run's trouble (a bug, a full disk
        under the store) must not end the server, whose task group this is."""

        async def on_progress(stage: Stage, detail: str = "") -> None:
            live.stage = stage + (f", {detail}" if detail else "")
            if stage != "queued" and self.store.get(run_id, None).state == "queued":
                self.store.mark(run_id, "running")

        ended: tuple[RunState, str | None] | None = None  # how it ended, once it has
        try:
            with live.scope:
                async with anyio.create_task_group() as helpers:
                    helpers.start_soon(self._keep_output, run_id, live)
                    try:
                        result = await work(live.output.feed, on_progress)
                    except SandboxError as exc:
                        ended = ("failed", describe(exc))
                    else:
                        stored = self._keep(run_id, lambda: self.store.save_result(run_id, result))
                        ended = ("finished", None) if stored else ("failed", UNSTORED_NOTE)
                    helpers.cancel_scope.cancel()
        except Exception:  # a bug, not the run's fault: on the record, never the server's end
            log.exception("background run %s failed", run_id)
            ended = ("failed", FAILED_NOTE)
        finally:  # also when the server's own scope is cancelled (SIGTERM, Ctrl-C)
            if ended is not None:
                state, note = ended
            elif self.store.cancel_asked(run_id):  # cancelled by run_cancel
                state, note = "cancelled", CANCELLED_NOTE
            else:  # by the server stopping
                state, note = "lost", STOPPED_NOTE
            self._keep(run_id, lambda: self.store.save_output(run_id, live.output.so_far()))
            if state != "finished":
                self._keep(run_id, lambda: self.store.mark(run_id, state, note))
            live.done.set()
            del self._live[run_id]

    @staticmethod
    def _keep(run_id: str, write: Callable[[], None]) -> bool:
        """Write to the store; whether it was written. One that fails (a full disk) is logged,
        and the record stays as it was (a run in flight whose process is gone reads as lost)."""
        try:
            write()
        except OSError as exc:
            log.error("background run %s: its record could not be written: %s", run_id, exc)
            return False
        return True

    async def _expire_every(self, scope: anyio.CancelScope, period_s: float) -> None:
        """Remove expired results while the server runs, not only when someone asks for one."""
        with scope:
            while True:
                await anyio.sleep(period_s)
                try:
                    self.store.expire()
                except OSError as exc:
                    log.error("background runs: expired results could not be removed: %s", exc)

    async def _keep_output(self, run_id: str, live: _Live) -> None:
        """Save the output so far while it grows; stop the run when another process asks."""
        saved: tuple[int, tuple[str, ...]] = (-1, ())
        since_save = 0.0
        while True:
            await anyio.sleep(LOOK_EVERY_S)
            since_save += LOOK_EVERY_S
            if self.store.cancel_asked(run_id):
                live.scope.cancel()
                return
            if since_save >= SAVE_EVERY_S:
                since_save = 0.0
                output = live.output.so_far()
                if (output.printed, output.limits_hit) != saved:
                    with contextlib.suppress(OSError):
                        self.store.save_output(run_id, output)
                    saved = (output.printed, output.limits_hit)


def _with(record: RunRecord, live: _Live) -> RunRecord:
    return replace(record, output=live.output.so_far())
