"""What keeping a notebook's Python state costs a cell: the same cell in the same workspace with
its state carried (restored before it, pickled after it, inside the sandbox) and without
(keep_state=false), measured in the same run, through a real MCP client over stdio against
`agent-sandbox serve` (warm pool on for the default profile).

Two states, each written by one untimed call first:
  - a small namespace (minimal profile): a few numbers, a dict, a list, a function, a class and
    its instance, an import;
  - a --mib MiB pandas DataFrame (datascience profile: its runs start cold, with or without state).
The timed cell is `print('hi')`, --runs calls per row, --gap seconds apart, the two rows of a
state in ABBA order so that drift falls on both alike. Median and p95 in ms, the ratio of medians
to the row without state, the state's size and how many calls started warm.

The floor under the DataFrame's row: `docker run -i --rm --network none` of the datascience
image, moving the same number of bytes in on stdin and back out on stdout (as a state travels
through the engine's attach stream), against the same `docker run` moving nothing.

    .venv/bin/python benchmarks/state.py [--runs 20] [--gap 0.2] [--mib 50]
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import anyio
import docker
from latency import p95
from mcp import Client, StdioServerParameters

HI = "print('hi')"
SMALL = (
    "import json\nlimit = 10\nratio = 0.5\nnames = ['a', 'b', 'c']\nconfig = {'depth': 3, 'tags': names}\n"
    "def score(x):\n    return x * ratio\n"
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\norigin = Point(0, 0)\n"
)


def frame(mib: int) -> str:
    rows = mib * 1024 * 1024 // (8 * 10)  # ten float64 columns
    return f"import numpy as np, pandas as pd\ndf = pd.DataFrame(np.random.rand({rows}, 10))\n"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.2)
    parser.add_argument("--mib", type=int, default=50)
    options = parser.parse_args()
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, Docker {docker.from_env().version()['Version']}, "
        f"{datetime.date.today()}; {options.runs} calls per row, {options.gap:g} s apart"
    )
    workspaces = tempfile.mkdtemp(prefix="bench-state-")
    atexit.register(shutil.rmtree, workspaces, ignore_errors=True)
    env = {
        **os.environ,
        "AGENT_SANDBOX_WORKSPACES__DIR": workspaces,
        "AGENT_SANDBOX_ENGINE__PROFILES": '["minimal", "datascience"]',
        "AGENT_SANDBOX_ENGINE__POOL_SIZE": "2",
        "AGENT_SANDBOX_SERVER__RUNS_PER_MINUTE_PER_CLIENT": "0",
    }
    parameters = StdioServerParameters(command=sys.executable, args=["-m", "agent_sandbox", "serve"], env=env)
    title = "print('hi') in a workspace"
    print(f"{title:52} {'median ms':>10} {'p95 ms':>8} {'x no state':>10} {'state':>9} {'warm':>5}")
    async with Client(parameters) as client:
        await anyio.sleep(2)  # let the pool fill
        for label, setup, profile in (
            ("small namespace", SMALL, "minimal"),
            (f"{options.mib} MiB DataFrame", frame(options.mib), "datascience"),
        ):
            created = await client.call_tool("workspace_create", {})
            workspace = (created.structured_content or {})["workspace"]
            made = await client.call_tool(
                "run_python", {"code": setup, "workspace": workspace, "image": profile}
            )
            state = (made.structured_content or {}).get("state") or {}
            assert state.get("saved"), made
            size = state["bytes"]
            samples: dict[bool, list[float]] = {False: [], True: []}
            warm: dict[bool, int] = {False: 0, True: 0}
            for index in range(options.runs):
                order = (False, True) if index % 2 == 0 else (True, False)  # ABBA
                for keep in order:
                    await anyio.sleep(options.gap)
                    arguments: dict[str, Any] = {
                        "code": HI,
                        "workspace": workspace,
                        "image": profile,
                        "keep_state": keep,
                    }
                    started = time.perf_counter()
                    result = await client.call_tool("run_python", arguments)
                    samples[keep].append((time.perf_counter() - started) * 1000)
                    content = result.structured_content or {}
                    assert content.get("stdout") == "hi\n", result
                    warm[keep] += bool(content.get("warm_start"))
            baseline = statistics.median(samples[False])
            for keep, name in ((False, "without state (keep_state=false)"), (True, "with state")):
                median = statistics.median(samples[keep])
                shown = _size(size) if keep else "-"
                print(
                    f"{label + ', ' + name:52} {median:10.1f} {p95(samples[keep]):8.1f} "
                    f"{median / baseline:10.2f} {shown:>9} {warm[keep]:5d}"
                )
    frame_bytes = size  # the last state measured: the DataFrame's
    floor = {moved: [_docker_moving(moved) for _ in range(options.runs)] for moved in (0, frame_bytes)}
    empty = statistics.median(floor[0])
    for moved, samples in floor.items():
        name = f"docker run -i, {_size(moved)} in and out" if moved else "docker run -i, nothing moved"
        median = statistics.median(samples)
        print(f"{name:52} {median:10.1f} {p95(samples):8.1f} {median / empty:10.2f} {'-':>9} {'-':>5}")


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} B"


def _docker_moving(size: int) -> float:
    """Milliseconds for a plain `docker run -i` that reads ``size`` bytes and writes them back."""
    command = [
        "docker", "run", "-i", "--rm", "--network", "none", "agent-sandbox:datascience", "python3", "-c",
        "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())",
    ]  # fmt: skip
    data = os.urandom(size)
    started = time.perf_counter()
    done = subprocess.run(command, input=data, capture_output=True, check=True)
    elapsed = (time.perf_counter() - started) * 1000
    assert len(done.stdout) == size
    return elapsed


if __name__ == "__main__":
    anyio.run(main)
