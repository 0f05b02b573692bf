"""What a workspace adds to a run: restoring its files before and saving /work after, against
the same run without a workspace, measured in the same run.

Each row is --runs `tools/call run_python` calls over MCP stdio (a real server, pool on, so the
plain rows start warm like the workspace ones), --gap seconds apart, after one untimed call. The
workspace holds --files files of --kib KiB each, written by that first call.

    .venv/bin/python benchmarks/workspaces.py [--runs 20] [--gap 0.2] [--files 20] [--kib 50]
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import statistics
import sys
import tempfile

import anyio
import docker
from latency import p95, timed
from mcp import Client, StdioServerParameters

HI = 'print("hi")'


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.2)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--kib", type=int, default=50)
    options = parser.parse_args()
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, Docker {docker.from_env().version()['Version']}, "
        f"{options.runs} calls each, {options.gap:g} s apart; "
        f"workspace of {options.files} x {options.kib} KiB"
    )
    workspaces = tempfile.mkdtemp(prefix="bench-workspaces-")
    atexit.register(shutil.rmtree, workspaces, ignore_errors=True)
    env = {**os.environ, "AGENT_SANDBOX_WORKSPACES__DIR": workspaces}
    parameters = StdioServerParameters(command=sys.executable, args=["-m", "agent_sandbox", "serve"], env=env)
    size = options.kib * 1024
    fill = f"for i in range({options.files}):\n    open(f'data_{{i}}.bin', 'wb').write(b'x' * {size})"
    rows: dict[str, list[float]] = {}
    async with Client(parameters) as client:
        created = await client.call_tool("workspace_create", {})
        workspace = (created.structured_content or {})["workspace"]

        async def call(arguments: dict[str, object]) -> None:
            result = await client.call_tool("run_python", arguments)
            assert (result.structured_content or {}).get("stdout") == "hi\n", result

        await anyio.sleep(2)  # let the pool fill
        await client.call_tool("run_python", {"code": fill, "workspace": workspace})
        await call({"code": HI})
        rows["no workspace"] = await timed(lambda: call({"code": HI}), options.runs, options.gap)
        rows["empty-handed run in the workspace"] = await timed(
            lambda: call({"code": HI, "workspace": workspace}), options.runs, options.gap
        )
    baseline = statistics.median(rows["no workspace"])
    print(f"{'run_python over MCP stdio':36} {'median ms':>10} {'p95 ms':>8} {'x plain':>8}")
    for name, samples in rows.items():
        median = statistics.median(samples)
        print(f"{name:36} {median:10.1f} {p95(samples):8.1f} {median / baseline:8.2f}")


if __name__ == "__main__":
    anyio.run(main)
