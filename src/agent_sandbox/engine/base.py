"""The one interface every engine implements, and the vocabulary it shares with its callers.

An engine runs a ``RunSpec`` in a fresh sandbox of its own making and returns the raw
``Outcome``; it reports its health, reaps what a crashed process left, keeps sandboxes warm if it
can, and removes what this process still has. ``Sandbox`` is written against this interface
only; the Docker backend is one implementation (``engine/backends.py`` picks it). A new backend
starts the launcher (``engine/launcher.py``) with the job on its stdin and hands the bytes that
come back to a ``JobSession`` (``engine/session.py``), which speaks the launcher's protocol and
keeps the deadlines; it implements this and nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol

from agent_sandbox.engine.spec import ContainerShape, Outcome, RunSpec
from agent_sandbox.errors import EngineError

# Where a run is, told as it starts each: fetching wheels, waiting for a slot, getting a sandbox,
# installing its wheels (then running), running.
Stage = Literal["resolving", "queued", "starting", "installing", "running"]
STDOUT, STDERR = 1, 2  # the program's output streams, as OutputCallback names them
LIMITS = 3  # not output: the kinds of limit the run has reached so far, as OutputCallback names them
# Worker threads a backend keeps for its calls to the engine (create, attach, remove), apart from
# the ones watching runs: anyio's shared pool also serves the stdio transport.
ENGINE_CALL_THREADS = 16


class ProgressCallback(Protocol):
    """Told each stage of a run as it starts; ``detail`` says more (queued: how many wait ahead,
    told again as that changes)."""

    def __call__(self, stage: Stage, detail: str = "") -> Awaitable[None]: ...


async def no_progress(stage: Stage, detail: str = "") -> None:
    """The ``ProgressCallback`` of a caller that wants none."""


# Called (from a worker thread) as the program's output arrives: the stream (STDOUT or STDERR)
# and its bytes, with the launcher's own lines and files already taken out; and, as stream LIMITS,
# each time the launcher's measurements show another limit reached while the program runs, the
# kinds reached so far (``ViolationKind`` values, comma-separated ASCII). Output readers skip it.
OutputCallback = Callable[[int, bytes], None]


@dataclass(frozen=True)
class ImageState:
    """One image the engine was asked about; one that is missing says how to make it."""

    name: str
    present: bool
    size_bytes: int | None = None
    created: str | None = None  # when it was built, "YYYY-MM-DD HH:MM" UTC
    problem: str | None = None


@dataclass(frozen=True)
class RuntimeState:
    """What runs the sandboxes: ``used`` (the configured runtime, else the engine's default), the
    ones ``offered``, and what else matters, in the engine's own words: how to offer another
    runtime, and what the engine cannot enforce (each with its fix)."""

    used: str
    default: str
    offered: tuple[str, ...]
    details: str  # e.g. "cgroup v1; security: seccomp"
    fix: str  # how to offer a runtime the engine lacks
    weaknesses: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineHealth:
    """Everything an operator or a probe asks of an engine, in one answer. ``problems`` are what
    keeps runs from starting, each an ``EngineError`` whose message says the fix; with the
    engine unreachable only that one is known, and ``version`` is None."""

    description: str  # what and where, e.g. "Docker 20.10.24 at unix:///var/run/..."
    version: str | None
    runtime: RuntimeState | None = None
    images: list[ImageState] = field(default_factory=list)
    problems: list[EngineError] = field(default_factory=list)


class WarmSandboxes(Protocol):
    """Sandboxes an engine started ahead of time, each for one job."""

    @property
    def ready(self) -> int:
        """How many wait for a job now."""

    async def filled(self) -> None:
        """Wait until every place holds a ready sandbox."""


class Engine(Protocol):
    """Runs jobs in fresh, single-use sandboxes; see the module docstring."""

    name: str  # how messages call it, e.g. "the Docker engine"

    async def run(
        self,
        spec: RunSpec,
        on_progress: ProgressCallback | None = None,
        on_output: OutputCallback | None = None,
    ) -> Outcome:
        """Run ``spec`` in a sandbox of its own, removed afterwards whatever happens (cancellation
        too); ``on_output`` sees the output live. Raises ``EngineError``."""

    def warm(
        self, shape: ContainerShape, size: int, max_idle_s: float, max_size: int = 0
    ) -> AbstractAsyncContextManager[WarmSandboxes]:
        """Keep ``size`` sandboxes of ``shape`` started ahead of time while the block lasts, more
        (up to ``max_size``) when calls come faster than they start; runs of that shape take one
        if one is ready."""

    def health(self, images: Sequence[str], runtime: str) -> EngineHealth:
        """Ask the engine (blocking: call it in a thread) about itself, ``images`` and ``runtime``."""

    def reap(self, older_than_s: float) -> int:
        """Remove sandboxes a crashed process left, and any older than ``older_than_s``; how many."""

    def close(self) -> int:
        """Remove every sandbox this process still has (runs cut short by a shutdown); how many."""
