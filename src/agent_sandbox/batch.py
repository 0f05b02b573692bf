"""Batch runs: many independent programs in one call (``run_batch``, ``agent-sandbox run --batch``),
for evaluation harnesses and agents that fire many small programs at once.

Each item runs in a fresh sandbox of its own, exactly as a run_python or run_project call would,
side by side up to ``parallel`` at a time (the caller's share of the server's slots); an item
that is refused or that the engine fails gets its error in its place and the others go on. The
answer has one entry per item, in the order sent, the counts and a summary line.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import anyio
from pydantic import ValidationError

from agent_sandbox.errors import SandboxError, describe, describe_invalid
from agent_sandbox.models import BatchEntry, BatchItem, BatchResult, RunRequest, RunResult

RunOne = Callable[[RunRequest], Awaitable[RunResult]]
OnDone = Callable[[int, int], Awaitable[None]]  # (items done, items in all)

log = logging.getLogger(__name__)


async def run_all(items: Sequence[BatchItem], run_one: RunOne, parallel: int, on_done: OnDone) -> BatchResult:
    """Run every item through ``run_one``, ``parallel`` at a time; ``on_done`` hears each end."""
    entries: list[BatchEntry] = [BatchEntry(index=index) for index in range(len(items))]
    limiter = anyio.CapacityLimiter(max(1, parallel))
    done = 0

    async def run(index: int, item: BatchItem) -> None:
        nonlocal done
        async with limiter:
            outcome = await _attempt(index, item, run_one)
        if isinstance(outcome, str):
            entries[index] = BatchEntry(index=index, error=f"items[{index}]: {outcome}")
        else:
            entries[index] = BatchEntry(index=index, result=outcome)
        done += 1
        await on_done(done, len(items))

    async with anyio.create_task_group() as group:
        for index, item in enumerate(items):
            group.start_soon(run, index, item)
    return tally(entries)


async def _attempt(index: int, item: BatchItem, run_one: RunOne) -> RunResult | str:
    """The item's result, or why it never ran."""
    try:
        return await run_one(item.request())
    except ValidationError as exc:
        return describe_invalid(exc)
    except SandboxError as exc:
        return describe(exc)
    except ValueError as exc:
        return f"refused: {exc}"
    except Exception as exc:  # a fault of ours must not cost the other items their results
        log.exception("run_batch item %d failed", index)
        return f"the server failed on this item ({type(exc).__name__}: {exc}); the other items are unaffected"


def tally(entries: list[BatchEntry]) -> BatchResult:
    """The counts and the summary line of a finished batch."""
    results = [entry.result for entry in entries if entry.result is not None]
    passed = sum(1 for result in results if result.exit_code == 0 and not result.violations)
    limits = Counter(kind for result in results for kind in {v.kind.value for v in result.violations})
    errors = len(entries) - len(results)
    summary = (
        f"{len(entries)} programs: {passed} passed, {len(results) - passed} failed, {errors} did not run"
    )
    if limits:
        summary += "; limits hit: " + ", ".join(f"{kind} {count}" for kind, count in sorted(limits.items()))
    return BatchResult(
        results=entries,
        passed=passed,
        failed=len(results) - passed,
        errors=errors,
        limits_hit=dict(sorted(limits.items())),
        summary=summary,
    )
