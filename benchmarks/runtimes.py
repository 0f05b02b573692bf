"""What gVisor costs a program, beyond start-up: the same workloads on the host's python3, in a
sandbox under runc and in one under gVisor (runsc), all in the same run.

Each workload runs --runs times per column, through the engine in-process (pool off); a row is
the median of the result's `duration_s`: from handing the job to the started container to the
program's end (unpacking, starting `python3`, running), with creating and starting the container
left out; for the host, the wall-clock time of `python3 -c`. Then the memory a warm sandbox
holds while it waits for a job (its launcher, and under gVisor the Sentry), as the engine's
cgroup counts it (`docker stats`), under each runtime.

    .venv/bin/python benchmarks/runtimes.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import anyio
import docker

from agent_sandbox.config import GVISOR, EngineSettings, Settings
from agent_sandbox.engine.docker import OWNER_LABEL, DockerEngine
from agent_sandbox.engine.launch import owner_id
from agent_sandbox.models import ProjectFile, RunRequest
from agent_sandbox.sandbox import Sandbox

WORKLOADS = {
    "hello world": "print('ok')",
    "CPU: a 3-million-step Python loop": "total = 0\nfor i in range(3_000_000):\n    total += i\nprint('ok')",
    "files: write and read back 2000 small files": (
        "import os, tempfile\nfolder = tempfile.mkdtemp()\nfor i in range(2000):\n"
        "    with open(os.path.join(folder, str(i)), 'w') as f:\n        f.write('x' * 100)\n"
        "for i in range(2000):\n    open(os.path.join(folder, str(i))).read()\nprint('ok')"
    ),
    "processes: 20 x subprocess.run(['true'])": (
        "import subprocess\nfor _ in range(20):\n    subprocess.run(['true'], check=True)\nprint('ok')"
    ),
    "memory: fill 200 MiB": "block = b'x' * (200 * 2**20)\nprint('ok')",
}
RUNTIMES = {"runc": "", "gVisor": GVISOR}


async def in_sandbox(runtime: str, code: str, runs: int) -> float:
    """Median `duration_s` in ms of ``runs`` cold runs of ``code`` under ``runtime``."""
    settings = Settings(engine=EngineSettings(pool_size=0, runtime=runtime))
    sandbox = Sandbox(settings)
    request = RunRequest(files=[ProjectFile(path="main.py", content=code)])
    durations = []
    for _ in range(runs):
        result = await sandbox.run(request)
        assert result.stdout == "ok\n", (result.stdout, result.stderr, result.violations)
        durations.append(result.duration_s * 1000)
    return statistics.median(durations)


async def on_host(code: str, runs: int) -> float:
    """Median wall-clock ms of ``runs`` runs of the host's `python3 -c code`."""
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        done = await anyio.run_process(["/usr/bin/python3", "-c", code])
        durations.append((time.perf_counter() - started) * 1000)
        assert done.stdout == b"ok\n"
    return statistics.median(durations)


async def idle_memory_mib(client: docker.DockerClient, runtime: str) -> float:
    """MiB a warm sandbox under ``runtime`` holds while it waits for its job (`docker stats`)."""
    settings = Settings(engine=EngineSettings(pool_size=1, runtime=runtime))
    async with Sandbox(settings) as sandbox:
        assert sandbox.pool is not None
        await sandbox.pool.filled()
        await anyio.sleep(1)  # let it settle
        (waiting,) = client.containers.list(filters={"label": f"{OWNER_LABEL}={owner_id()}"})
        return float(waiting.stats(stream=False)["memory_stats"]["usage"]) / 2**20


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    client = docker.from_env()
    runtime = DockerEngine(Settings().engine, client=client).health([], "").runtime
    if runtime is None or GVISOR not in runtime.offered:
        sys.exit("the Docker engine offers no runsc runtime: bash scripts/ensure-engine.sh registers it")
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, Docker {client.version()['Version']}, "
        f"median of {options.runs} runs each, in ms"
    )
    print(f"{'workload':46} {'host':>8} {'runc':>8} {'gVisor':>8} {'gVisor/runc':>12}")
    for name, code in WORKLOADS.items():
        host = await on_host(code, options.runs)
        runc, gvisor = [await in_sandbox(runtime, code, options.runs) for runtime in RUNTIMES.values()]
        print(f"{name:46} {host:8.1f} {runc:8.1f} {gvisor:8.1f} {gvisor / runc:12.2f}")
    runc, gvisor = [await idle_memory_mib(client, runtime) for runtime in RUNTIMES.values()]
    row = "warm sandbox waiting, MiB (docker stats)"
    print(f"{row:46} {'':8} {runc:8.2f} {gvisor:8.2f} {gvisor / runc:12.2f}")


if __name__ == "__main__":
    anyio.run(main)
