"""Runs per second: many concurrent MCP sessions against one server, one batch, and the naive way,
all in one run, for each OCI runtime the engine offers.

For each runtime (the engine's default, crun and runsc where the engine offers them):
  - naive: --clients parallel loops of `docker run --rm --network none [--runtime R] IMAGE
    python3 -c 'print("hi")'` until --calls runs are done (the Docker CLI, no hardening),
  - the server of --baseline-rev (the commit before this work; a git worktree of it), then this
    tree's: `agent-sandbox serve --transport streamable-http` with the default configuration (as
    a new user runs it) but the runtime and no start rate per client (sessions without an id
    from one address are one client, whose 120 runs a minute the rows would pass), --calls
    `run_python` calls of `print("hi")` from --clients concurrent MCP sessions,
  - this tree's server again, one `run_batch` call of --calls such programs (in batches of at
    most the server's max_batch, one after another).
Then this tree's server with engine.backend "oci" (the same containers started by runc directly,
no Docker in the path), sessions and run_batch, against the default runtime's naive row; and the
floor under both: --clients loops of bare `runc run` of the sandbox's own bundle with
`python3 -c` in place of the launcher (no server, no launcher, no Docker).
Calls per second, the ratio to the naive row, failures (an error, or not "hi"), and the
containers left behind afterwards (there must be none). Last, where the machine's CPU went per
call, in ms, for the naive row and this server's sessions rows of the default runtime and of the
OCI backend: the Docker daemon, containerd and its shims (those alive at the end), the server,
this process (the MCP clients, or what starts the Docker CLIs), and the rest (the Docker CLIs, the
OCI runtime's invocations, the sandboxes' own processes, the kernel).

    .venv/bin/python benchmarks/throughput.py [--calls 200] [--clients 8] [--baseline-rev 863c043]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import docker
from latency import worktree
from mcp import Client

from agent_sandbox.config import GVISOR, load_settings
from agent_sandbox.engine.docker import LABEL, DockerEngine
from agent_sandbox.engine.launch import owner_id
from agent_sandbox.engine.oci import OciEngine, oci_config
from agent_sandbox.engine.spec import ContainerShape
from agent_sandbox.models import LimitRequest
from agent_sandbox.sandbox import resolve_limits

CODE = 'print("hi")'
ROOT = Path(__file__).parents[1]
BASELINE_REV = "863c043"  # the last commit before issue 22's work
CRUN = "crun"


async def in_loops(clients: int, calls: int, call: Callable[[], Awaitable[bool]]) -> tuple[float, int]:
    """Calls per second and failures of ``calls`` calls made by ``clients`` loops side by side;
    ``call`` says whether one succeeded."""
    remaining = iter(range(calls))
    failures = 0

    async def loop() -> None:
        nonlocal failures
        for _ in remaining:
            failures += not await call()

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(clients):
            group.start_soon(loop)
    return calls / (time.perf_counter() - started), failures


async def floor(oci: OciEngine, image: str, clients: int, calls: int) -> tuple[float, int]:
    """Calls per second and failures of ``clients`` loops of bare `runc run`: the OCI backend's
    bundle for ``image``, running `python3 -c` instead of the launcher."""
    settings = load_settings()
    shape = ContainerShape.of(image, resolve_limits(LimitRequest(), settings.limits))
    prepared = await anyio.to_thread.run_sync(oci.prepare, image)

    async def call() -> bool:
        name = f"agent-sandbox-floor-{secrets.token_hex(4)}"
        bundle = oci.bundles / name
        bundle.mkdir(parents=True)
        config = oci_config(shape, prepared, name, owner_id())
        config["process"]["args"] = ["python3", "-c", CODE]
        (bundle / "config.json").write_text(json.dumps(config))
        try:
            argv = ["runc", "--root", str(oci.state_root), "run", "--bundle", str(bundle), name]
            done = await anyio.run_process(argv, check=False)
        finally:
            shutil.rmtree(bundle)
        return done.returncode == 0 and done.stdout == b"hi\n"

    return await in_loops(clients, calls, call)


async def naive(image: str, runtime: str, clients: int, calls: int) -> tuple[float, int]:
    """Calls per second and failures of ``clients`` loops of plain `docker run`."""
    runtime_args = ["--runtime", runtime] if runtime else []
    argv = ["docker", "run", "--rm", "--network", "none", *runtime_args, image, "python3", "-c", CODE]

    async def call() -> bool:
        done = await anyio.run_process(argv, check=False)
        return done.returncode == 0 and done.stdout == b"hi\n"

    return await in_loops(clients, calls, call)


# Long-lived processes by name, whose CPU is counted apart.
ENGINE_GROUPS = {"dockerd": ("dockerd",), "containerd + shims": ("containerd", "containerd-shim")}


class CpuSplit:
    """CPU seconds spent from its making to ``stop``: the whole machine's (from /proc/stat), and
    by process name for the long-lived processes that are there at both ends."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.busy, self.before = self._busy(), self._by_pid()

    def _busy(self) -> float:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return (sum(fields) - fields[3] - fields[4]) / self.tick  # all but idle and iowait

    def _by_pid(self) -> dict[int, tuple[str, float]]:
        found = {}
        for name in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError, ValueError):
                stat = Path(f"/proc/{name}/stat").read_text()
                fields = stat.rpartition(")")[2].split()
                comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                found[int(name)] = (comm, (int(fields[11]) + int(fields[12])) / self.tick)
        return found

    def stop(self, own: dict[str, int]) -> dict[str, float]:
        """Seconds by group (``own`` adds groups of one pid each), and "the rest"."""
        busy, after = self._busy() - self.busy, self._by_pid()
        spent = {pid: cpu - self.before[pid][1] for pid, (_, cpu) in after.items() if pid in self.before}
        split = {
            group: sum(cpu for pid, cpu in spent.items() if after[pid][0] in names)
            for group, names in ENGINE_GROUPS.items()
        }
        split |= {group: spent.get(pid, 0.0) for group, pid in own.items()}
        split["the rest"] = busy - sum(split.values())
        return split


@contextlib.contextmanager
def served(source: Path, runtime: str, backend: str = "docker") -> Iterator[tuple[str, int]]:
    """`agent-sandbox serve` over Streamable HTTP from ``source`` (a tree's src folder), default
    configuration but the backend, the runtime and the start rate; yields its MCP URL and pid."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(source),
        "AGENT_SANDBOX_ENGINE__BACKEND": backend,
        "AGENT_SANDBOX_ENGINE__RUNTIME": runtime,
        "AGENT_SANDBOX_SERVER__RUNS_PER_MINUTE_PER_CLIENT": "0",
        "AGENT_SANDBOX_CONFIG": "",
    }
    argv = [sys.executable, "-m", "agent_sandbox", "serve", "--transport", "streamable-http"]
    argv += ["--port", str(port)]
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        time.sleep(2)  # the warm pool fills
        yield f"http://127.0.0.1:{port}/mcp", server.pid
    finally:
        server.terminate()
        server.wait(timeout=60)


async def sessions(url: str, clients: int, calls: int) -> tuple[float, int]:
    """Calls per second and failures of ``calls`` run_python calls from ``clients`` sessions."""
    remaining = iter(range(calls))
    failures = 0

    async def session() -> None:
        nonlocal failures
        async with Client(url) as client:
            for _ in remaining:
                result = await client.call_tool("run_python", {"code": CODE})
                content = result.structured_content or {}
                failures += result.is_error or content.get("stdout") != "hi\n"

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(clients):
            group.start_soon(session)
    return calls / (time.perf_counter() - started), failures


async def batch(url: str, calls: int, max_batch: int) -> tuple[float, int]:
    """Calls per second and failures of ``calls`` programs sent as run_batch calls."""
    failures = 0
    async with Client(url) as client:
        started = time.perf_counter()
        for first in range(0, calls, max_batch):
            items = [{"code": CODE}] * min(max_batch, calls - first)
            result = await client.call_tool("run_batch", {"items": items})
            answer = result.structured_content or {}
            entries = answer.get("results", [])
            failures += len(items) - len(entries) if not result.is_error else len(items)
            failures += sum(1 for e in entries if not e.get("result") or e["result"]["stdout"] != "hi\n")
        return calls / (time.perf_counter() - started), failures


def leaked(client: docker.DockerClient, oci: OciEngine) -> int:
    """Sandboxes left: Docker's containers and the OCI backend's, of any process."""
    docker_left = len(client.containers.list(all=True, filters={"label": LABEL}))
    return docker_left + len(list(oci.bundles.glob("*")) if oci.bundles.exists() else [])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    options = parser.parse_args()
    settings = load_settings()
    image = settings.engine.image_of(settings.engine.profile)
    client = docker.from_env()
    health = DockerEngine(settings.engine, client=client).health([], "")
    assert health.runtime is not None
    offered = health.runtime.offered
    runtimes = [""] + [name for name in (CRUN, GVISOR) if name in offered]
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, Docker {health.version}; {options.calls} calls "
        f"from {options.clients} concurrent clients; runtimes: {health.runtime.default} (default), "
        f"{', '.join(runtimes[1:]) or 'no other'}"
    )
    print(f"{'row':52} {'calls/s':>8} {'x naive':>8} {'failures':>8} {'left':>5}")
    oci = OciEngine(settings.engine.model_copy(update={"backend": "oci"}))
    splits: dict[str, dict[str, float]] = {}
    naive_default = 0.0
    with worktree(options.baseline_rev) as before:
        for runtime in runtimes:
            name = runtime or health.runtime.default
            cpu = CpuSplit()
            rate, failures = await naive(image, runtime, options.clients, options.calls)
            if not runtime:
                splits["naive docker run"] = cpu.stop({"the clients": os.getpid()})
                naive_default = rate
            base = rate
            rows = [(f"{name}: naive, {options.clients} loops of docker run --rm", rate, failures)]
            trees = [(f"{options.baseline_rev} server", before / "src")] if before else []
            for label, source in [*trees, ("this server", ROOT / "src")]:
                with served(source, runtime) as (url, pid):
                    cpu = CpuSplit()
                    rate, failures = await sessions(url, options.clients, options.calls)
                    if not runtime:
                        splits[label] = cpu.stop({"the server": pid, "the clients": os.getpid()})
                rows.append((f"{name}: {label}, {options.clients} MCP sessions", rate, failures))
            with served(ROOT / "src", runtime) as (url, _):
                rate, failures = await batch(url, options.calls, settings.server.max_batch)
            rows.append((f"{name}: this server, run_batch", rate, failures))
            report(rows, base, leaked(client, oci))
        rows = []
        with served(ROOT / "src", "", backend="oci") as (url, pid):
            cpu = CpuSplit()
            rate, failures = await sessions(url, options.clients, options.calls)
            splits["this server, oci backend"] = cpu.stop({"the server": pid, "the clients": os.getpid()})
        rows.append((f"runc, oci backend: this server, {options.clients} MCP sessions", rate, failures))
        with served(ROOT / "src", "", backend="oci") as (url, _):
            rate, failures = await batch(url, options.calls, settings.server.max_batch)
        rows.append(("runc, oci backend: this server, run_batch", rate, failures))
        cpu = CpuSplit()
        rate, failures = await floor(oci, image, options.clients, options.calls)
        splits["floor, bare runc run"] = cpu.stop({"the clients": os.getpid()})
        rows.append((f"runc, floor: {options.clients} loops of bare runc run", rate, failures))
        report(rows, naive_default, leaked(client, oci))
        if before is None:
            print(f"# {options.baseline_rev} is not in this clone: no row for the server before")
    groups = ["dockerd", "containerd + shims", "the server", "the clients", "the rest"]
    print(f"\n{'CPU per call, ms (default runtime, oci)':40} " + " ".join(f"{group:>18}" for group in groups))
    for label, split in splits.items():
        cells = " ".join(f"{1000 * split.get(group, 0.0) / options.calls:18.1f}" for group in groups)
        print(f"{label:40} {cells}")


def report(rows: list[tuple[str, float, int]], naive_rate: float, left: int) -> None:
    """Print ``rows`` (label, calls/s, failures) against ``naive_rate``, with what was left."""
    for row, rate, failures in rows:
        print(f"{row:52} {rate:8.1f} {rate / naive_rate:8.2f} {failures:8d} {left:5d}", flush=True)


if __name__ == "__main__":
    anyio.run(main)
