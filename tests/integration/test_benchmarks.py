"""The benchmarks still run, end to end, on a few calls each: the numbers and chart of
docs/numbers.md come from them. No timing is asserted here; the numbers are measured by running
them in full."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent_sandbox.config import GVISOR
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.engine.kubernetes import KubernetesEngine
from tests.helpers import TEST_NAMESPACE, cluster_kubeconfig, offered_runtimes, skip_unless_offered

ROOT = Path(__file__).parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bench(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_latency_runs_every_row_and_draws_the_chart(tmp_path: Path, engine: DockerEngine) -> None:
    chart = tmp_path / "latency.png"
    out = bench("benchmarks/latency.py", "--runs", "2", "--gap", "0", "--chart", str(chart))
    for row in (
        "warm pool",
        "warm pool, no gap",
        "pool off (cold)",
        "engine in-process",
        "docker run",
        "host /usr",
        "oci backend: MCP stdio, warm pool",
        "oci backend: MCP stdio, warm pool, no gap",
        "oci backend: MCP stdio, pool off (cold)",
    ):
        assert row in out
    for row in ("launcher of 44b580e, no hook", "post_mortem off", "post-mortem (default)"):
        assert row in out  # what measuring costs, A/B against the launcher before it
    gvisor = GVISOR in offered_runtimes(engine)
    gvisor_rows = (
        "gVisor: MCP stdio, warm pool",
        "warm pool, no gap",
        "pool off (cold)",
        "gVisor: docker run",
    )
    for row in gvisor_rows:
        assert (row in out) is gvisor, row
    assert chart.read_bytes().startswith(PNG_SIGNATURE)
    assert chart.stat().st_size > 10_000  # a drawn chart, not an empty canvas


def test_the_profile_prints_the_split_of_a_warm_call() -> None:
    out = bench("benchmarks/profile.py", "--runs", "3", "--gap", "0")
    for row in (
        "MCP request in",
        "launcher: read",
        "MCP reply",
        "whole call, MCP over stdio",
        "inside the sandbox",
    ):
        assert row in out


def test_throughput_runs_every_row_and_leaves_nothing(engine: DockerEngine) -> None:
    """The server of the commit before issue 22 too: a clone of main has it."""
    out = bench("benchmarks/throughput.py", "--calls", "6", "--clients", "2")
    rows = [line.split() for line in out.splitlines() if ": " in line and not line.startswith("#")]
    names = [" ".join(row[:-4]) for row in rows]
    assert "runc: 863c043 server, 2 MCP sessions" in names
    assert "runc: this server, run_batch" in names
    assert "runc, oci backend: this server, 2 MCP sessions" in names
    assert "runc, oci backend: this server, run_batch" in names
    assert "runc, floor: 2 loops of bare runc run" in names
    assert (GVISOR in offered_runtimes(engine)) is ("runsc: this server, run_batch" in names)
    for row in rows:
        assert row[-2:] == ["0", "0"], row  # no failures, nothing left behind
    assert "the server" in out
    assert "the clients" in out


@pytest.mark.parametrize(
    ("script", "rows"),
    [
        ("benchmarks/packages.py", ("requirements=['six']", "datascience profile", "docker run")),
        ("benchmarks/workspaces.py", ("no workspace", "run in the workspace")),
        ("benchmarks/state.py", ("small namespace, with state", "MiB DataFrame, without state")),
    ],
)
def test_the_other_benchmarks_run(script: str, rows: tuple[str, ...]) -> None:
    out = bench(script, "--runs", "2", "--gap", "0")
    for row in rows:
        assert row in out


def test_the_runtime_cost_benchmark_runs(engine: DockerEngine) -> None:
    skip_unless_offered(engine, GVISOR, "benchmarks/runtimes.py")
    out = bench("benchmarks/runtimes.py", "--runs", "1")
    for row in ("hello world", "CPU:", "files:", "processes:", "memory:", "warm sandbox waiting"):
        assert row in out


def test_the_backends_benchmark_runs_every_row(
    engine: DockerEngine, kubernetes_engine: KubernetesEngine
) -> None:
    """Both backends on the test cluster and the local engine (the fixtures check them, and that
    they are left empty); skipped without a test cluster, failed when CI requires one."""
    kubeconfig = cluster_kubeconfig()
    out = bench(
        "benchmarks/backends.py",
        *("--runs", "2", "--calls", "4", "--concurrency", "2"),
        *("--kubeconfig", kubeconfig, "--namespace", TEST_NAMESPACE),
    )
    for row in (
        "| cold (pool off) |",
        "| warm (pool of 2, filled before each call) |",
        "`docker run --rm IMAGE python3 -c`",
        "| throughput, 4 calls, 2 at once, pool of 2 |",
        "| runs/s |",
        "| runs that found a warm sandbox |",
        "`kubelet_pod_start_duration_seconds` per pod",
        "| pods told apart",
        "| the whole series: observations",
        "creationTimestamp → container startedAt",
    ):
        assert row in out, row


def test_background_benchmark_runs_every_row() -> None:
    out = bench("benchmarks/background.py", "--runs", "2", "--gap", "0", "--lines", "4", "--spacing", "0.2")
    for row in (
        'print("hi"): foreground run_python',
        "sleep 2 s, print: background start + run_result(wait_s=60)",
        "background start alone (run_id in hand)",
        "| progress notifications of a foreground run_python |",
        "| run_status polled every 0.2 s, background run |",
        "leaked containers: 0",
    ):
        assert row in out, row
