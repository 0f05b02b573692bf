"""Helpers shared by tests: building requests and reading results."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agent_sandbox.models import LimitRequest, ProjectFile, RunRequest, RunResult
from agent_sandbox.sandbox import Sandbox

SandboxFactory = Callable[..., Awaitable[Sandbox]]


def snippet(code: str, **fields: object) -> RunRequest:
    """A one-file request; ``limits`` may be given as a dict."""
    limits = fields.pop("limits", {})
    assert isinstance(limits, dict)
    return RunRequest(
        files=[ProjectFile(path="main.py", content=code)],
        limits=LimitRequest(**limits),
        **fields,  # type: ignore[arg-type]
    )


def kinds(result: RunResult) -> set[str]:
    return {v.kind.value for v in result.violations}
