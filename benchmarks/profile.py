"""Where a warm `run_python` call's time goes, end to end: the split, in ms (median over --runs).

The server runs in this process behind an in-memory MCP client, with a warm pool, and the layers
of one call are timed by wrapping them (the code itself is unchanged): the MCP request in (the
client's send, the server's parse, validation and dispatch), the tool's own bookkeeping, the
sandbox's checks, the engine taking a warm container and building the job (archive), the
launcher until the cell's code starts (reading and unpacking the job, handing the cell to the
notebook runner, which a warm sandbox started before the job came; the code reports when it
starts, by the wall clock shared with the container), the cell and the launcher's end of job
(measurements, snapshot of files, end lines), the outcome and the result's assembly, and the MCP
reply. Beside them, in the same run: the whole call over stdio (a server process of its own),
Python's start-up inside a sandbox (the program times `python3 -c pass` in it), and the host's
`python3 -c`.

    .venv/bin/python benchmarks/profile.py [--runs 30] [--gap 0.2] [--runtime runsc]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

import anyio
import docker
from latency import p95, timed
from mcp import Client, StdioServerParameters

import agent_sandbox.engine.docker as docker_backend
from agent_sandbox.config import load_settings
from agent_sandbox.engine.session import JobSession
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server.app import build_server
from agent_sandbox.server.run_tools import ToolCall

# The cell says when its code starts, on the wall clock the container shares with the host.
CELL = "import time\nprint(time.time())"
PYTHON_START = (
    "import subprocess, sys, time\n"
    "samples = []\n"
    "for _ in range(5):\n"
    "    t = time.perf_counter()\n"
    "    subprocess.run([sys.executable, '-c', 'pass'], check=True)\n"
    "    samples.append((time.perf_counter() - t) * 1000)\n"
    "print(sorted(samples)[2])"
)
STEPS = [
    ("MCP request in: client send, parse, validate, dispatch", "call", "tool in"),
    ("tool: caller, request model, rate, audit, progress", "tool in", "sandbox in"),
    ("sandbox: checks, limits, spec, admission", "sandbox in", "engine in"),
    ("engine: take a warm container, build the job", "engine in", "job sent"),
    ("launcher: read the job, unpack, until the cell starts", "job sent", "code starts"),
    ("cell runs; launcher measures, snapshots, ends the job", "code starts", "job ended"),
    ("engine: outcome from the launcher's reports", "job ended", "engine out"),
    ("sandbox: result, verdict, notes", "engine out", "sandbox out"),
    ("tool: audit, metrics, progress, content", "sandbox out", "tool out"),
    ("MCP reply: serialize, send, client parse", "tool out", "reply"),
]


class Marks:
    """Timestamps (perf_counter, ms) of the current call's events, and each call's, kept."""

    def __init__(self) -> None:
        self.now: dict[str, float] = {}
        self.calls: list[dict[str, float]] = []

    def mark(self, name: str) -> None:
        self.now[name] = time.perf_counter() * 1000

    def wall_to_perf(self, wall_s: float) -> float:
        """A wall-clock time (s) on the perf_counter scale (ms) of this process."""
        return (wall_s - time.time()) * 1000 + time.perf_counter() * 1000


def instrument(marks: Marks) -> None:
    """Wrap each layer of a call so that entering and leaving it is marked."""

    def around_async(owner: Any, name: str, enter: str, leave: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            marks.mark(enter)
            try:
                return await original(*args, **kwargs)
            finally:
                marks.mark(leave)

        setattr(owner, name, wrapped)

    around_async(ToolCall, "run", "tool in", "tool out")
    around_async(Sandbox, "run", "sandbox in", "sandbox out")
    around_async(docker_backend.DockerEngine, "run", "engine in", "engine out")
    drive = docker_backend.drive

    def timed_drive(session: JobSession, *args: Any) -> None:
        marks.mark("job sent")
        drive(session, *args)
        marks.mark("job ended")

    docker_backend.drive = timed_drive  # type: ignore[assignment]


async def split(runs: int, gap_s: float, runtime: str) -> tuple[list[dict[str, float]], list[float]]:
    """Each step's ms per call, and Python's start-up inside a sandbox (ms, one per call)."""
    marks = Marks()
    instrument(marks)
    configured = load_settings()
    settings = configured.model_copy(
        update={
            "engine": configured.engine.model_copy(update={"pool_size": 2, "runtime": runtime}),
            "server": configured.server.model_copy(update={"runs_per_minute_per_client": 0}),
        }
    )
    async with Sandbox(settings) as sandbox, Client(build_server(sandbox, "in-process")) as client:
        assert sandbox.pool is not None
        await sandbox.pool.filled()

        async def call(code: str) -> str:
            marks.now = {}
            marks.mark("call")
            result = await client.call_tool("run_python", {"code": code})
            marks.mark("reply")
            assert result.structured_content is not None, result
            return str(result.structured_content["stdout"])

        await call(CELL)
        steps: list[dict[str, float]] = []
        for _ in range(runs):
            await anyio.sleep(gap_s)
            started_wall = float(await call(CELL))
            marks.now["code starts"] = marks.wall_to_perf(started_wall)
            steps.append({name: marks.now[end] - marks.now[start] for name, start, end in STEPS})
        python_start = [float(await call(PYTHON_START)) for _ in range(max(3, runs // 3))]
    return steps, python_start


async def stdio_calls(runs: int, gap_s: float, runtime: str) -> list[float]:
    env = {
        **os.environ,
        "AGENT_SANDBOX_ENGINE__POOL_SIZE": "2",
        "AGENT_SANDBOX_ENGINE__RUNTIME": runtime,
        "AGENT_SANDBOX_SERVER__RUNS_PER_MINUTE_PER_CLIENT": "0",
    }
    parameters = StdioServerParameters(command=sys.executable, args=["-m", "agent_sandbox", "serve"], env=env)
    async with Client(parameters) as client:

        async def call() -> None:
            result = await client.call_tool("run_python", {"code": 'print("hi")'})
            assert result.structured_content is not None
            assert result.structured_content["stdout"] == "hi\n"

        await anyio.sleep(2)  # the pool fills
        await call()
        return await timed(call, runs, gap_s)


async def host_python(runs: int, gap_s: float) -> list[float]:
    async def call() -> None:
        await anyio.run_process(["/usr/bin/python3", "-c", 'print("hi")'])

    return await timed(call, runs, gap_s)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--gap", type=float, default=0.2, help="Seconds between calls (default 0.2).")
    parser.add_argument("--runtime", default="", help="The OCI runtime (default: the configured one).")
    options = parser.parse_args()
    runtime = options.runtime or load_settings().engine.runtime
    version = docker.from_env().version()["Version"]
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, Docker {version}, runtime "
        f"{runtime or 'the engine default'}; {options.runs} warm calls, {options.gap:g} s apart"
    )
    steps, python_start = await split(options.runs, options.gap, runtime)
    stdio = await stdio_calls(options.runs, options.gap, runtime)
    host = await host_python(options.runs, options.gap)
    medians = {name: statistics.median(call[name] for call in steps) for name, _, _ in STEPS}
    in_memory = statistics.median(sum(call.values()) for call in steps)
    print(f"{'step of a warm run_python call':58} {'median ms':>10} {'share':>6}")
    for name, median in medians.items():
        print(f"{name:58} {median:10.1f} {median / in_memory:6.0%}")
    print(f"{'whole call, MCP in memory':58} {in_memory:10.1f}")
    rows: dict[str, list[float]] = defaultdict(list)
    rows["whole call, MCP over stdio (server process)"] = stdio
    rows["python3 -c pass inside the sandbox (from the program)"] = python_start
    rows["host /usr/bin/python3 -c"] = host
    for name, samples in rows.items():
        print(f"{name:58} {statistics.median(samples):10.1f}   p95 {p95(samples):.1f}")
    ratio = statistics.median(stdio) / statistics.median(host)
    print(f"{'stdio call / host python3 -c':58} {ratio:10.2f}x")


if __name__ == "__main__":
    anyio.run(main)
