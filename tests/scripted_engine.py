"""An ``Engine`` that runs nothing: each run returns the outcome the test scripted for it. For fast
tests of the service and MCP layers (workspaces, verdicts, content, errors, metrics, health); the
real engine's behaviour is tested against the real engine (tests/integration, tests/mcp)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import anyio

from agent_sandbox.engine.base import (
    STDERR,
    STDOUT,
    EngineHealth,
    ImageState,
    OutputCallback,
    ProgressCallback,
    RuntimeState,
)
from agent_sandbox.engine.spec import ContainerShape, FileEntry, FilesOut, OmittedFile, Outcome, RunSpec
from agent_sandbox.errors import EngineError

Script = Outcome | EngineError | Callable[[RunSpec], Outcome]


def outcome(
    stdout: bytes = b"",
    stderr: bytes = b"",
    exit_code: int | None = 0,
    files: dict[str, bytes] | None = None,
    snapshot: dict[str, bytes] | None = None,
    omitted: Sequence[OmittedFile] = (),
    **facts: object,
) -> Outcome:
    """An outcome as an engine would report it; ``files`` came back as artifacts, ``snapshot``
    as all of /work (a workspace run)."""
    return Outcome(
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        stdout_bytes=len(stdout),
        stderr_bytes=len(stderr),
        stdout_truncated=False,
        stderr_truncated=False,
        duration_s=0.01,
        timed_out=bool(facts.pop("timed_out", False)),
        oom_killed=bool(facts.pop("oom_killed", False)),
        output_killed=bool(facts.pop("output_killed", False)),
        files=files_out(files or {}),
        snapshot=files_out(snapshot, omitted) if snapshot is not None else None,
        **facts,  # type: ignore[arg-type]
    )


def files_out(files: dict[str, bytes], omitted: Sequence[OmittedFile] = ()) -> FilesOut:
    entries = [FileEntry(path, len(data)) for path, data in files.items()]
    return FilesOut(entries, list(omitted), len(files) + len(omitted), b"".join(files.values()))


@dataclass
class _Warm:
    ready: int

    async def filled(self) -> None:
        return None


class ScriptedEngine:
    """Each run takes the next script (an ``Outcome``, an ``EngineError`` to raise, or a function
    of the spec); the last one repeats. ``specs`` keeps what it was asked to run; ``hold``, when
    set, keeps every run waiting until it is set again."""

    name = "the scripted engine"

    def __init__(self, *script: Script, health: EngineHealth | None = None):
        self.script = list(script) or [outcome()]
        self.specs: list[RunSpec] = []
        self.hold: anyio.Event | None = None
        self._health = health

    async def run(
        self,
        spec: RunSpec,
        on_progress: ProgressCallback | None = None,
        on_output: OutputCallback | None = None,
    ) -> Outcome:
        self.specs.append(spec)
        if on_progress is not None:
            await on_progress("starting")
            await on_progress("running")
        if self.hold is not None:
            await self.hold.wait()
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, EngineError):
            raise step
        done = step(spec) if callable(step) else step
        if on_output is not None:
            for stream, data in ((STDOUT, done.stdout), (STDERR, done.stderr)):
                if data:
                    on_output(stream, data)
        return done

    @contextlib.asynccontextmanager
    async def warm(
        self, shape: ContainerShape, size: int, max_idle_s: float, max_size: int = 0
    ) -> AsyncIterator[_Warm]:
        yield _Warm(size)

    def health(self, images: Sequence[str], runtime: str) -> EngineHealth:
        if self._health is not None:
            return self._health
        state = RuntimeState(runtime or "scripted", "scripted", ("scripted",), "nothing runs", "none")
        return EngineHealth(
            "the scripted engine", "1.0", state, [ImageState(image, True) for image in images]
        )

    def reap(self, older_than_s: float) -> int:
        return 0

    def close(self) -> int:
        return 0
