"""``agent-sandbox run --detach``: a background run for a person at a terminal. The command hands
the request to a child process in a session of its own (so closing the terminal does not stop
it) over a pipe, never through a file; the child records the run in the same store the server
uses, prints its id, and runs it to the end. ``agent-sandbox runs ...`` then follows it, as
``run_status``, ``run_result`` and ``run_cancel`` do for an MCP client."""

from __future__ import annotations

import getpass
import math
import os
import select
import subprocess
import sys
from pathlib import Path

import anyio

from agent_sandbox.background import BackgroundRuns
from agent_sandbox.config import Settings
from agent_sandbox.engine.base import OutputCallback, ProgressCallback
from agent_sandbox.errors import EngineError, Refused
from agent_sandbox.models import RunRequest, RunResult
from agent_sandbox.sandbox import LOCAL, Sandbox

CHILD_COMMAND = "run-detached"  # the hidden command the child runs
START_TIMEOUT_S = 120.0  # for the child to check the engine and record the run
ENGINE_EXIT = 3  # cli.EXIT_ENGINE: the child could not reach the engine or the image


def owner() -> str:
    """Whose runs the command line starts: the user's."""
    return f"cli:{getpass.getuser()}"


def start(request: RunRequest, config: Path | None) -> str:
    """Start ``request`` in a detached child process; its run id, once it is recorded."""
    command = [sys.executable, "-m", "agent_sandbox"]
    command += ["--config", str(config)] if config else []
    child = subprocess.Popen(
        [*command, CHILD_COMMAND],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    assert child.stderr is not None
    with child.stdin:
        child.stdin.write(request.model_dump_json().encode())
    # The first line is the id; the child goes on running (communicate() would wait for its end).
    ready, _, _ = select.select([child.stdout], [], [], START_TIMEOUT_S)
    if not ready:
        child.kill()
        raise EngineError(f"the detached run did not start within {START_TIMEOUT_S:g} s")
    run_id = child.stdout.readline().decode().strip()
    if not run_id:
        child.wait()
        lines = child.stderr.read().decode(errors="replace").strip().splitlines()
        # Its last log line says why, as `run` would have: "... ERROR agent_sandbox: refused: ...".
        why = lines[-1].split(": ", 1)[-1].removeprefix("refused: ") if lines else ""
        raise (EngineError if child.returncode == ENGINE_EXIT else Refused)(
            why or f"the detached run exited with {child.returncode}"
        )
    return run_id


def serve_one(settings: Settings) -> int:
    """The child: read the request on stdin, record the run, print its id, then run it."""
    request = RunRequest.model_validate_json(sys.stdin.buffer.read())
    sandbox = Sandbox(settings)
    sandbox.start()
    sandbox.prepare(request)  # refused here, before an id is given out
    background = BackgroundRuns(settings.runs, settings.engine.max_concurrent_runs)

    async def work(on_output: OutputCallback, on_progress: ProgressCallback) -> RunResult:
        return await sandbox.run(request, on_progress, LOCAL, on_output)

    async def run() -> None:
        async with background:  # no warm pool: this process runs one run
            timeout_s = request.limits.timeout_s or settings.limits.timeout_s
            record = background.start(owner(), "agent-sandbox run", timeout_s, work)
            print(record.id, flush=True)
            _detach()
            await background.wait(record.id, None, math.inf)

    try:
        anyio.run(run)
    finally:
        sandbox.close()
    return 0


def _detach() -> None:
    """Let go of the terminal: the parent has the id, and nobody reads our output any more."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for stream in (0, 1, 2):
        os.dup2(devnull, stream)
    os.close(devnull)
