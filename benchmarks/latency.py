"""End-to-end latency of `run_python`, against baselines measured in the same run.

Latency of `print("hi")`, median and p95 over --runs calls each:
  - MCP `tools/call run_python` through a real client over stdio, warm pool on (size 2) and off,
    under the engine's default runtime (runc) and, where the engine offers it, gVisor (runsc),
  - the engine called directly in-process, cold (what MCP adds to a cold start),
  - plain `docker run --rm --network none IMAGE python3 -c ...` (the Docker CLI, no hardening),
    and the same with `--runtime runsc`,
  - the host's `/usr/bin/python3 -c ...`,
  - MCP over stdio again, warm, no gap and cold, with engine.backend "oci" (runc without Docker).
Calls are --gap seconds apart (an agent's think time; the pool refills meanwhile), and the warm
rows again back to back (no gap: the pool must keep up), both also for the server of --before-rev
(a git worktree of it). Then what measuring costs a warm hello
world (the engine in-process, warm pool of 1), A/B in the same run, in interleaved blocks: the
launcher of --baseline-rev (before usage, limits and the post-mortem were measured) on the image
without the post-mortem hook, against today's launcher with results.post_mortem off (usage and
limits read; the hook loaded but idle) and on (the default: each Python process also connects to
the post-mortem socket). Throughput is benchmarks/throughput.py's.

    .venv/bin/python benchmarks/latency.py [--runs 30] [--gap 0.2] [--chart docs/latency.png]
                                           [--baseline-rev 44b580e]

--chart also draws the latency rows as a PNG (the chart in docs/numbers.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import docker
from mcp import Client, StdioServerParameters

import agent_sandbox.engine.docker as docker_backend
from agent_sandbox.config import GVISOR, EngineSettings, ResultSettings, Settings, load_settings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.engine.launch import launcher_command
from agent_sandbox.models import ProjectFile, RunRequest
from agent_sandbox.sandbox import Sandbox

CODE = 'print("hi")'
ROOT = Path(__file__).parents[1]
BEFORE_REV = "863c043"  # the last commit before the early runner and the adaptive pool
BASELINE_REV = "44b580e"  # the last commit before the launcher measured usage, limits and stacks
NO_HOOK_REPOSITORY = "agent-sandbox-nohook"


async def timed(action: Callable[[], Awaitable[object]], runs: int, gap_s: float) -> list[float]:
    samples = []
    for _ in range(runs):
        await anyio.sleep(gap_s)
        started = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p95(samples: list[float]) -> float:
    return sorted(samples)[max(0, round(0.95 * len(samples)) - 1)]


def server_env(pool_size: int, runtime: str = "", backend: str = "docker") -> dict[str, str]:
    # The per-client rate (120 runs a minute) would refuse a long run of back-to-back calls.
    return {
        **os.environ,
        "AGENT_SANDBOX_ENGINE__BACKEND": backend,
        "AGENT_SANDBOX_ENGINE__POOL_SIZE": str(pool_size),
        "AGENT_SANDBOX_ENGINE__RUNTIME": runtime,
        "AGENT_SANDBOX_SERVER__RUNS_PER_MINUTE_PER_CLIENT": "0",
    }


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path | None]:
    """A checkout of ``rev`` in a temporary folder (None if this clone does not have it)."""
    folder = Path(tempfile.mkdtemp(prefix="agent-sandbox-baseline-"))
    added = subprocess.run(
        ["git", "worktree", "add", "--detach", str(folder), rev], cwd=ROOT, capture_output=True, check=False
    )
    try:
        yield folder if added.returncode == 0 else None
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=ROOT, capture_output=True)


async def mcp_stdio(
    pool_size: int,
    runs: int,
    gap_s: float,
    runtime: str = "",
    source: Path | None = None,
    backend: str = "docker",
) -> list[float]:
    """Warm or cold calls to `agent-sandbox serve` over stdio: this tree's, or ``source``'s (the
    src folder of another checkout)."""
    env = server_env(pool_size, runtime, backend) | ({"PYTHONPATH": str(source)} if source else {})
    parameters = StdioServerParameters(command=sys.executable, args=["-m", "agent_sandbox", "serve"], env=env)
    async with Client(parameters) as client:

        async def call() -> None:
            result = await client.call_tool("run_python", {"code": CODE})
            assert result.structured_content is not None
            assert result.structured_content["stdout"] == "hi\n", result

        await anyio.sleep(2)  # let the pool fill
        await call()
        return await timed(call, runs, gap_s)


async def engine_direct(runs: int, gap_s: float) -> list[float]:
    sandbox = Sandbox(Settings(engine=EngineSettings(pool_size=0)))
    request = RunRequest(files=[ProjectFile(path="main.py", content=CODE)])

    async def call() -> None:
        assert (await sandbox.run(request)).stdout == "hi\n"

    await call()
    return await timed(call, runs, gap_s)


def baseline_launcher(rev: str) -> list[str] | None:
    """The launcher command as of ``rev``, or None if this clone does not have it."""
    source = f"{rev}:src/agent_sandbox/engine/launcher.py"
    done = subprocess.run(["git", "show", source], capture_output=True, text=True, cwd=ROOT, check=False)
    return ["python3", "-I", "-S", "-c", done.stdout] if done.returncode == 0 else None


def image_without_hook(client: docker.DockerClient, image: str) -> None:
    """``image`` with the post-mortem hook's .pth removed, as NO_HOOK_REPOSITORY:PROFILE."""
    site = "$(python3 -c 'import site; print(site.getsitepackages()[0])')"
    dockerfile = (
        f'FROM {image}\nUSER root\nRUN rm "{site}/agent_sandbox_postmortem.pth"\n'
        "RUN python3 -c \"import sys; assert 'agent_sandbox_postmortem' not in sys.modules\"\n"
        "USER 1000:1000\n"
    )
    with tempfile.TemporaryDirectory() as context:
        (Path(context) / "Dockerfile").write_text(dockerfile)
        client.images.build(path=context, tag=f"{NO_HOOK_REPOSITORY}:{image.rpartition(':')[2]}", rm=True)


async def measuring_cost(
    arms: dict[str, tuple[list[str], str, bool]], runs: int, gap_s: float
) -> dict[str, list[float]]:
    """Warm in-process hello worlds for each arm (launcher command, image repository, post_mortem),
    in interleaved blocks so that drift on the machine falls on every arm alike."""
    samples: dict[str, list[float]] = {name: [] for name in arms}
    request = RunRequest(files=[ProjectFile(path="main.py", content=CODE)])
    blocks = max(1, min(5, runs // 5))
    for block in range(blocks):
        for name, (launcher, repository, post_mortem) in arms.items():
            # What container_options starts, for this arm's pool.
            docker_backend.launcher_command = lambda relay_output, launcher=launcher: launcher
            settings = Settings(
                engine=EngineSettings(pool_size=1, image_repository=repository),
                results=ResultSettings(post_mortem=post_mortem),
            )
            async with Sandbox(settings) as sandbox:
                assert sandbox.pool is not None

                async def call() -> None:
                    assert (await sandbox.run(request)).stdout == "hi\n"

                await sandbox.pool.filled()
                await call()
                share = runs // blocks + (1 if block < runs % blocks else 0)
                samples[name] += await timed(call, share, max(gap_s, 0.3))  # time for the pool to refill
    docker_backend.launcher_command = launcher_command
    return samples


async def command(argv: list[str], runs: int, gap_s: float) -> list[float]:
    async def call() -> None:
        done = await anyio.run_process(argv)
        assert done.stdout == b"hi\n"

    await call()
    return await timed(call, runs, gap_s)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--gap", type=float, default=0.2, help="Seconds between calls (default 0.2).")
    parser.add_argument("--chart", type=Path, help="Also draw the latency rows into this PNG.")
    parser.add_argument(
        "--before-rev",
        default=BEFORE_REV,
        help=f"The server the warm rows are measured against (default {BEFORE_REV}).",
    )
    parser.add_argument(
        "--baseline-rev",
        default=BASELINE_REV,
        help=f"The launcher to measure against (default {BASELINE_REV}).",
    )
    options = parser.parse_args()
    if options.chart and importlib.util.find_spec("matplotlib") is None:
        parser.error("--chart needs matplotlib: pip install -e '.[bench]'")
    runs, gap = options.runs, options.gap
    engine = load_settings().engine
    image = engine.image_of(engine.profile)
    client = docker.from_env()
    docker_version = client.version()["Version"]
    runtime = DockerEngine(engine, client=client).health([], "").runtime
    gvisor = runtime is not None and GVISOR in runtime.offered
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Docker {docker_version}"
    print(f"# {machine}, {runs} calls each, {gap:g} s apart")
    latency = {
        "MCP stdio run_python, warm pool": await mcp_stdio(2, runs, gap),
        "MCP stdio run_python, warm pool, no gap": await mcp_stdio(2, runs, 0),
    }
    with worktree(options.before_rev) as before:
        if before is not None:
            latency |= {
                f"{options.before_rev}: MCP stdio, warm pool": await mcp_stdio(
                    2, runs, gap, source=before / "src"
                ),
                f"{options.before_rev}: MCP stdio, warm pool, no gap": await mcp_stdio(
                    2, runs, 0, source=before / "src"
                ),
            }
    latency |= {
        "MCP stdio run_python, pool off (cold)": await mcp_stdio(0, runs, gap),
        "engine in-process, cold": await engine_direct(runs, gap),
        "docker run --rm --network none": await command(
            ["docker", "run", "--rm", "--network", "none", image, "python3", "-c", CODE], runs, gap
        ),
        "host /usr/bin/python3 -c": await command(["/usr/bin/python3", "-c", CODE], runs, gap),
        # The same containers started by runc directly (engine.backend "oci", configs/oci.toml).
        "oci backend: MCP stdio, warm pool": await mcp_stdio(2, runs, gap, backend="oci"),
        "oci backend: MCP stdio, warm pool, no gap": await mcp_stdio(2, runs, 0, backend="oci"),
        "oci backend: MCP stdio, pool off (cold)": await mcp_stdio(0, runs, gap, backend="oci"),
    }
    if gvisor:  # what the second wall costs (configs/strict.toml)
        latency |= {
            "gVisor: MCP stdio, warm pool": await mcp_stdio(2, runs, gap, GVISOR),
            "gVisor: MCP stdio, warm pool, no gap": await mcp_stdio(2, runs, 0, GVISOR),
            "gVisor: MCP stdio, pool off (cold)": await mcp_stdio(0, runs, gap, GVISOR),
            "gVisor: docker run --runtime runsc": await command(
                [
                    "docker",
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "--runtime",
                    GVISOR,
                    image,
                    "python3",
                    "-c",
                    CODE,
                ],
                runs,
                gap,
            ),
        }
    else:
        print("# the engine offers no runsc: no gVisor rows (scripts/ensure-engine.sh registers it)")
    baseline = statistics.median(latency["docker run --rm --network none"])
    print(f"{'latency of a hello world':40} {'median ms':>10} {'p95 ms':>8} {'x docker run':>13}")
    for name, samples in latency.items():
        median = statistics.median(samples)
        print(f"{name:40} {median:10.1f} {p95(samples):8.1f} {median / baseline:13.2f}")
    if options.chart:
        from chart import latency_chart  # matplotlib, only when a chart is asked for

        title = f"run_python hello world, {datetime.date.today()}\n{machine}, {runs} calls each"
        latency_chart(
            {name: (statistics.median(s), p95(s)) for name, s in latency.items()}, title, options.chart
        )
        print(f"chart: {options.chart}")

    launcher = baseline_launcher(options.baseline_rev)
    if launcher is None:
        print(f"\n# {options.baseline_rev} is not in this clone: no A/B of what measuring costs")
    else:
        image_without_hook(client, image)
        today = launcher_command(relay_output=False)
        arms = {
            f"launcher of {options.baseline_rev}, no hook": (launcher, NO_HOOK_REPOSITORY, False),
            "usage and limits, post_mortem off": (today, engine.image_repository, False),
            "usage, limits and post-mortem (default)": (today, engine.image_repository, True),
        }
        cost = await measuring_cost(arms, runs, gap)
        first = statistics.median(next(iter(cost.values())))
        header = f"{'warm hello world, engine in-process':40} {'median ms':>10} {'p95 ms':>8}"
        print(f"\n{header} {'+ms':>7} {'ratio':>6}")
        for name, samples in cost.items():
            median = statistics.median(samples)
            print(f"{name:40} {median:10.1f} {p95(samples):8.1f} {median - first:7.1f} {median / first:6.2f}")


if __name__ == "__main__":
    anyio.run(main)
