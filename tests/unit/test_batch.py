"""run_batch's logic with a scripted run (fast; the real engine's batch is tests/mcp/test_batch.py):
items in order, side by side up to the share, each one's error in its place, and the counts."""

from __future__ import annotations

import anyio
import pytest

from agent_sandbox.batch import run_all
from agent_sandbox.config import LimitSettings
from agent_sandbox.errors import Busy, EngineUnavailable
from agent_sandbox.models import (
    BatchItem,
    LimitRequest,
    ProjectFile,
    RunRequest,
    RunResult,
    Violation,
    ViolationKind,
)
from agent_sandbox.sandbox import resolve_limits

pytestmark = pytest.mark.anyio


def result(exit_code: int, stdout: str = "", violations: list[ViolationKind] | None = None) -> RunResult:
    limits = resolve_limits(LimitRequest(), LimitSettings())
    return RunResult(
        exit_code=exit_code,
        stdout=stdout,
        stderr="",
        stdout_truncated=False,
        stderr_truncated=False,
        stdout_bytes=len(stdout),
        stderr_bytes=0,
        duration_s=0.01,
        timed_out=False,
        oom_killed=False,
        warm_start=False,
        violations=[Violation(kind=kind, limit="1", message="measured") for kind in violations or []],
        notes=[],
        limits=limits,
        profile="minimal",
    )


def test_an_item_is_a_snippet_or_a_project_never_both() -> None:
    snippet = BatchItem(code="print(1)", timeout_s=2).request()
    assert (snippet.notebook, snippet.files[0].path, snippet.limits.timeout_s) == (True, "main.py", 2)
    project = BatchItem(files=[ProjectFile(path="a.py", content="")], entrypoint="a.py", args=["x"]).request()
    assert (project.notebook, project.entrypoint, project.args) == (False, "a.py", ["x"])
    with pytest.raises(ValueError, match="either code"):
        BatchItem().request()
    with pytest.raises(ValueError, match="args, entrypoint go with files"):
        BatchItem(code="1", entrypoint="b.py", args=["x"]).request()


async def test_items_come_back_in_order_each_with_its_own_outcome() -> None:
    items = [
        BatchItem(code="slow"),
        BatchItem(code="fails"),
        BatchItem(code="busy"),
        BatchItem(files=[]),  # refused by the request's own rules
        BatchItem(code="no engine"),
        BatchItem(code="too long"),
        BatchItem(code="bug"),
    ]
    running, most, done = 0, 0, []

    async def run_one(request: RunRequest) -> RunResult:
        nonlocal running, most
        code = request.files[0].content
        running += 1
        most = max(most, running)
        try:
            await anyio.sleep(0.2 if code == "slow" else 0.01)
        finally:
            running -= 1
        outcomes = {
            "slow": result(0, "fine\n"),
            "fails": result(1),
            "too long": result(137, violations=[ViolationKind.TIMEOUT]),
        }
        if code == "busy":
            raise Busy("2 runs are running and 8 waiting")
        if code == "no engine":
            raise EngineUnavailable("no Docker engine answers")
        if code == "bug":
            raise KeyError("oops")
        return outcomes[code]

    async def on_done(count: int, total: int) -> None:
        done.append((count, total))

    answer = await run_all(items, run_one, parallel=3, on_done=on_done)
    assert [entry.index for entry in answer.results] == list(range(7))
    assert answer.results[0].result is not None
    assert answer.results[0].result.stdout == "fine\n"
    assert answer.results[2].error == "items[2]: 2 runs are running and 8 waiting"
    assert answer.results[3].error is not None
    assert answer.results[3].error.startswith("items[3]: invalid arguments: files:")
    assert answer.results[4].error == "items[4]: the sandbox is unavailable: no Docker engine answers"
    assert answer.results[6].error is not None
    assert "KeyError" in answer.results[6].error
    assert (answer.passed, answer.failed, answer.errors, answer.limits_hit) == (1, 2, 4, {"timeout": 1})
    assert answer.summary == "7 programs: 1 passed, 2 failed, 4 did not run; limits hit: timeout 1"
    assert most == 3
    assert done == [(n, 7) for n in range(1, 8)]
