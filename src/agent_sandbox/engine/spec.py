"""What the engine is asked to run, and the raw facts it reports back. Pure data."""

from __future__ import annotations

from dataclasses import dataclass

from agent_sandbox.models import Limits


@dataclass(frozen=True)
class RunSpec:
    """What one container runs: files (a tar), the program, its input and its limits."""

    image: str
    archive: bytes
    entrypoint: str
    args: tuple[str, ...]
    stdin: bytes | None
    env: dict[str, str]
    limits: Limits


@dataclass(frozen=True)
class Outcome:
    """The raw facts of one run, before any judgement."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    stdout_bytes: int
    stderr_bytes: int
    duration_s: float
    timed_out: bool
    oom_killed: bool
    output_killed: bool
