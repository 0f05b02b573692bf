"""What per-run requirements cost once their wheels are in the host's cache, against runs
without requirements and the baselines, measured in the same run.

Each row is --runs `tools/call run_python` calls over MCP stdio (a real server), --gap seconds
apart, after one untimed call (which fills the wheel cache). Requirement runs always start a
container cold (their wheels are mounted at creation), so the fair comparison is the cold row;
the warm row is what a run without requirements costs with the pool on. Also shown: the medians
of the result's own install_s (in the sandbox) and resolve_s (on the host), and the datascience
profile importing the numpy it already has.

    .venv/bin/python benchmarks/packages.py [--runs 20] [--gap 0.2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from typing import Any

import anyio
import docker
from latency import command, p95, timed
from mcp import Client, StdioServerParameters

from agent_sandbox.config import EngineSettings

HI = 'print("hi")'
CASES: list[tuple[str, int, dict[str, Any], str]] = [
    # (row, pool size, run_python arguments, expected stdout)
    ("no requirements, warm pool", 2, {"code": HI}, "hi\n"),
    ("no requirements, cold", 0, {"code": HI}, "hi\n"),
    ("requirements=['six'], cached", 0, {"code": "import six; print('hi')", "requirements": ["six"]}, "hi\n"),
    (
        "requirements=['numpy'], cached",
        0,
        {"code": "import numpy; print('hi')", "requirements": ["numpy"]},
        "hi\n",
    ),
    (
        "datascience profile, import numpy",
        0,
        {"code": "import numpy; print('hi')", "image": "datascience"},
        "hi\n",
    ),
]


async def case(
    pool_size: int, arguments: dict[str, Any], expected: str, runs: int, gap_s: float
) -> dict[str, Any]:
    env = {
        **os.environ,
        "AGENT_SANDBOX_ENGINE__POOL_SIZE": str(pool_size),
        "AGENT_SANDBOX_ENGINE__PROFILES": '["minimal", "datascience"]',
    }
    parameters = StdioServerParameters(command=sys.executable, args=["-m", "agent_sandbox", "serve"], env=env)
    installs: list[float] = []
    resolves: list[float] = []
    async with Client(parameters) as client:

        async def call() -> None:
            result = await client.call_tool("run_python", arguments)
            content = result.structured_content or {}
            assert content.get("stdout") == expected, result
            if content.get("install"):
                installs.append(content["install"]["install_s"] * 1000)
                resolves.append(content["install"]["resolve_s"] * 1000)

        await anyio.sleep(2)  # let a pool fill
        await call()  # fills the wheel cache
        installs.clear()
        resolves.clear()
        samples = await timed(call, runs, gap_s)
    return {"samples": samples, "install": installs, "resolve": resolves}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.2, help="Seconds between calls (default 0.2).")
    options = parser.parse_args()
    runs, gap = options.runs, options.gap
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, Docker {docker.from_env().version()['Version']}, "
        f"{runs} calls each, {gap:g} s apart"
    )
    rows = {
        name: await case(pool, arguments, expected, runs, gap) for name, pool, arguments, expected in CASES
    }
    image = EngineSettings().image_of("minimal")
    rows["docker run --rm --network none"] = {
        "samples": await command(
            ["docker", "run", "--rm", "--network", "none", image, "python3", "-c", HI], runs, gap
        )
    }
    rows["host /usr/bin/python3 -c"] = {"samples": await command(["/usr/bin/python3", "-c", HI], runs, gap)}
    baseline = statistics.median(rows["no requirements, cold"]["samples"])
    print(
        f"{'run_python over MCP stdio':36} {'median ms':>10} {'p95 ms':>8} {'x cold':>7} "
        f"{'install ms':>11} {'resolve ms':>11}"
    )
    for name, row in rows.items():
        median = statistics.median(row["samples"])
        install = f"{statistics.median(row['install']):11.1f}" if row.get("install") else f"{'-':>11}"
        resolve = f"{statistics.median(row['resolve']):11.1f}" if row.get("resolve") else f"{'-':>11}"
        ratio = median / baseline
        print(f"{name:36} {median:10.1f} {p95(row['samples']):8.1f} {ratio:7.2f} {install} {resolve}")


if __name__ == "__main__":
    anyio.run(main)
