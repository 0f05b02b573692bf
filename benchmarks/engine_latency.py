"""Latency of one sandbox run, against baselines measured in the same process run.

Compares, for the same `print("hi")`:
  - agent-sandbox's engine (fresh hardened container, files over stdin, full result),
  - plain `docker run --rm --network none IMAGE python3 -c ...` (the CLI, no hardening),
  - the host's `python3 -c ...`.
Prints median and p95 in milliseconds, and ratios to the docker baseline.

    .venv/bin/python benchmarks/engine_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable

import anyio

from agent_sandbox.config import load_settings
from agent_sandbox.models import ProjectFile, RunRequest
from agent_sandbox.sandbox import Sandbox

CODE = 'print("hi")'


def timed_sync(action: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def timed_async(action: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p95(samples: list[float]) -> float:
    return sorted(samples)[max(0, round(0.95 * len(samples)) - 1)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    settings = load_settings()
    sandbox = Sandbox(settings)
    sandbox.start()
    request = RunRequest(files=[ProjectFile(path="main.py", content=CODE)])

    async def engine_run() -> None:
        result = await sandbox.run(request)
        assert result.stdout == "hi\n", result

    def docker_run() -> None:
        command = ["docker", "run", "--rm", "--network", "none", settings.engine.image, "python3", "-c", CODE]
        subprocess.run(command, check=True, capture_output=True)

    def host_python() -> None:
        subprocess.run(["/usr/bin/python3", "-c", CODE], check=True, capture_output=True)

    await engine_run()  # warm the client connection and the page cache
    results = {
        "agent-sandbox engine (cold container)": await timed_async(engine_run, runs),
        "docker run --rm --network none": timed_sync(docker_run, runs),
        "host /usr/bin/python3 -c": timed_sync(host_python, runs),
    }
    baseline = statistics.median(results["docker run --rm --network none"])
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Docker {sandbox.engine.check()}"
    print(f"# {runs} runs each on {machine}")
    print(f"{'what':40} {'median ms':>10} {'p95 ms':>8} {'x docker run':>13}")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(f"{name:40} {median:10.1f} {p95(samples):8.1f} {median / baseline:13.2f}")


if __name__ == "__main__":
    anyio.run(main)
