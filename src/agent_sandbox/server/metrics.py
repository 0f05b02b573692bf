"""Prometheus metrics of one server: what its tool calls came to, and the engine's load right now.

Each server has its own ``CollectorRegistry``, so several servers can live in one process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder

from agent_sandbox.errors import Busy, Refused
from agent_sandbox.models import RunResult, ViolationKind
from agent_sandbox.sandbox import Load, Sandbox

# From a warm snippet (tens of ms) to the longest time limit (300 s), about 1-2-5 per decade.
DURATION_BUCKETS_S = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0, 120.0, 300.0)
PEAK_MEMORY_BUCKETS_MIB = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class RunOutcome(StrEnum):
    """How a ``run_python`` / ``run_project`` call ended: the ``outcome`` label of the runs counter."""

    OK = "ok"  # the program exited 0 within its limits
    PROGRAM_ERROR = "program_error"  # it exited non-zero (or its package install failed), no limit hit
    LIMIT = "limit"  # it ran into at least one limit (counted by kind in the violations counter)
    REFUSED = "refused"  # not run: invalid arguments, the package policy, or the client over its rate
    BUSY = "busy"  # not run: the server's queue, or the client's, was full
    INFRASTRUCTURE_ERROR = "infrastructure_error"  # the engine failed or could not say, or a server bug
    CANCELLED = "cancelled"  # the client cancelled, or the server stopped, before the result


def outcome_of(result: RunResult) -> RunOutcome:
    """The outcome of a call that ran its program."""
    if result.violations:
        return RunOutcome.LIMIT
    if result.exit_code is None:  # the program never ran (its install failed), or the engine lost it
        return RunOutcome.PROGRAM_ERROR if result.install_failed else RunOutcome.INFRASTRUCTURE_ERROR
    return RunOutcome.OK if result.exit_code == 0 else RunOutcome.PROGRAM_ERROR


def outcome_of_error(exc: BaseException) -> RunOutcome:
    """The outcome of a call that ended in ``exc`` instead of a result."""
    if isinstance(exc, Busy):
        return RunOutcome.BUSY
    if isinstance(exc, Refused):
        return RunOutcome.REFUSED
    if isinstance(exc, asyncio.CancelledError):  # the server runs on asyncio (uvicorn, anyio.run)
        return RunOutcome.CANCELLED
    return RunOutcome.INFRASTRUCTURE_ERROR  # any other EngineError, or a bug


class Metrics:
    """Counts calls as they end; reads gauges from ``sandbox`` at scrape time."""

    def __init__(self, sandbox: Sandbox):
        self.registry = CollectorRegistry()
        self._runs = Counter(
            "agent_sandbox_runs",
            "Tool calls that run code, by tool and outcome.",
            ["tool", "outcome"],
            registry=self.registry,
        )
        self._violations = Counter(
            "agent_sandbox_violations",
            "Limits programs ran into, by kind.",
            ["kind"],
            registry=self.registry,
        )
        for kind in ViolationKind:
            self._violations.labels(kind=kind.value)  # every kind shows, at 0 until it happens
        self._duration = Histogram(
            "agent_sandbox_run_duration_seconds",
            "Wall time of calls that ran their program, from the request to the result "
            "(queueing, container start and package install included).",
            ["tool"],
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self._peak_memory = Histogram(
            "agent_sandbox_run_peak_memory_mib",
            "The most memory a run held at once, as its result's peak_memory_mib says (runs that "
            "report it; see usage_source there for how it was measured).",
            ["tool"],
            buckets=PEAK_MEMORY_BUCKETS_MIB,
            registry=self.registry,
        )
        gauges: dict[str, tuple[str, Callable[[Load], int]]] = {
            "agent_sandbox_runs_in_progress": ("Runs holding a run slot now.", lambda load: load.running),
            "agent_sandbox_runs_queued": (
                "Runs waiting for a run slot now (behind the server's slots or their client's share).",
                lambda load: load.queued,
            ),
            "agent_sandbox_run_slots": (
                "Runs allowed at once (engine.max_concurrent_runs).",
                lambda load: load.slots,
            ),
            "agent_sandbox_queue_places": (
                "Runs allowed to wait for a slot (engine.max_queued_runs).",
                lambda load: load.queue_places,
            ),
            "agent_sandbox_warm_pool_ready": (
                "Warm sandboxes waiting for a job now.",
                lambda load: load.warm_ready,
            ),
            "agent_sandbox_warm_pool_size": (
                "Warm sandboxes configured (engine.pool_size).",
                lambda load: load.warm_size,
            ),
        }
        for name, (documentation, read) in gauges.items():
            Gauge(name, documentation, registry=self.registry).set_function(_reading(sandbox, read))
        ProcessCollector(registry=self.registry)

    def record_result(self, tool: str, result: RunResult, seconds: float) -> None:
        """Count a call that ran its program and returned ``result`` after ``seconds``."""
        self._runs.labels(tool=tool, outcome=outcome_of(result)).inc()
        self._duration.labels(tool=tool).observe(seconds)
        if result.peak_memory_mib is not None:
            self._peak_memory.labels(tool=tool).observe(result.peak_memory_mib)
        for violation in result.violations:
            self._violations.labels(kind=violation.kind.value).inc()

    def record_error(self, tool: str, exc: BaseException) -> None:
        """Count a call that ended in ``exc`` instead of a result."""
        self._runs.labels(tool=tool, outcome=outcome_of_error(exc)).inc()

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The metrics in the format the ``Accept`` header asks for (Prometheus text by default),
        and its content type."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


def _reading(sandbox: Sandbox, read: Callable[[Load], int]) -> Callable[[], int]:
    """A gauge's value, read from the sandbox's load at scrape time."""
    return lambda: read(sandbox.load())
