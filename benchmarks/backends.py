"""What the Kubernetes backend costs against the Docker backend (the baseline), both measured in the
same run on the same machine.

`print('ok')` through the engine in-process (`Sandbox.run`, wall time of the call), with the shipped
profiles: configs/default.toml on Docker, configs/kubernetes.toml on Kubernetes (its pods on the
cluster of --kubeconfig, in --namespace, images never pulled: they must be loaded on the nodes):
  - cold: pool off, --runs calls one after another, each after a random pause of 0-1 s: the
    kubelet notices a started container at its next relist of the runtime's containers, once a
    second, and runs back to back lock onto one phase of that (a tight spread around whichever
    median that phase gives), where an agent's calls meet it at any phase;
  - warm: a pool of 2, filled before each call (`pool.filled()`), then the call timed;
  - throughput: --calls calls from --concurrency callers at once on one `Sandbox` (a pool of
    --concurrency, filled first; max_concurrent_runs as many), runs/s from the first call to the
    last result, and how many of them found a warm sandbox;
  - plain `docker run --rm IMAGE python3 -c ...` (the Docker CLI, no hardening), a baseline row.
Each row starts with one untimed call. The ratios are Kubernetes over Docker, of the medians (of
the rates for throughput).

Then the start of the timed cold pods as the cluster itself measured it:
  - the kubelet's histogram kubelet_pod_start_duration_seconds (every node's /metrics, through
    the API server's proxy): from the kubelet first seeing a pod to the sync that finds its
    container running. The kubelet observes more than pod starts: every pod once more at about
    0 s at its first sync (kubernetes/kubernetes#132268), and (seen on a 1.20 cluster) about half
    the pods a third time, about a second after their start, as the run deletes them. So a
    sum/count over the whole series (shown too) is no pod start time: the histogram is read right
    before and right after each cold run (outside the timing; the pause before a Kubernetes run
    is 1.5 s longer, for the late observation of the pod before to come in first), and a run
    whose window holds just one observation under 0.1 s (its first sync) and one above (its
    start) gives that pod's start exactly; a window with anything else (a late observation, a
    pod someone else started) is left out, and the table says how many pods were told apart;
  - each cold pod's creationTimestamp to its container's startedAt, from a watch on this
    process's pods (they are deleted as their run returns). Kubernetes 1.20 stores both with 1 s
    resolution: each is a whole number of seconds, give or take one.
At the end every pod and container this process made must be gone; else it says which and fails.

    .venv/bin/python benchmarks/backends.py [--runs 10] [--calls 12] [--concurrency 4]
        [--kubeconfig $SANDBOX_TESTS_KUBECONFIG or $KUBECONFIG] [--namespace agent-sandbox-test]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import itertools
import os
import platform
import random
import re
import statistics
import sys
import threading
import time
from pathlib import Path

import anyio
import docker
from kubernetes import client as k8s
from kubernetes import watch
from latency import p95

from agent_sandbox.config import Settings, load_settings
from agent_sandbox.engine.docker import OWNER_LABEL as CONTAINER_OWNER_LABEL
from agent_sandbox.engine.kubernetes import OWNER_LABEL, KubernetesEngine, owner_digest
from agent_sandbox.engine.launch import owner_id
from agent_sandbox.models import ProjectFile, RunRequest, RunResult
from agent_sandbox.sandbox import Sandbox

CODE = "print('ok')"
REQUEST = RunRequest(files=[ProjectFile(path="main.py", content=CODE)])
ROOT = Path(__file__).parents[1]
BACKENDS = ("docker", "kubernetes")
WARM_POOL = 2
FILL_TIMEOUT_S = 120  # a pool that cannot start sandboxes retries for ever
GONE_TIMEOUT_S = 30
RELIST_S = 1.0  # the kubelet's relist period: the pause before each cold run is random within it
LATE_OBSERVATION_S = 1.5  # waited before a Kubernetes cold run: the last pod's third observation
METRIC = "kubelet_pod_start_duration_seconds"
FIRST_SYNC_S = 0.1  # the kubelet's first-sync observations of a pod fall under this bucket bound
_SAMPLE = re.compile(rf'^{METRIC}_(sum|count|bucket)(?:{{(?:.*,)?le="([^"]+)"[^}}]*}})? (\S+)$')


def settings_for(backend: str, options: argparse.Namespace, pool_size: int, concurrency: int = 1) -> Settings:
    """The shipped profile of ``backend``, with ``pool_size`` and room for ``concurrency`` runs."""
    settings = load_settings(
        ROOT / "configs" / ("default.toml" if backend == "docker" else "kubernetes.toml")
    )
    engine = settings.engine.model_copy(
        update={
            "backend": backend,
            "pool_size": pool_size,
            "max_concurrent_runs": max(concurrency, settings.engine.max_concurrent_runs),
        }
    )
    cluster = settings.kubernetes.model_copy(
        update={
            "kubeconfig": options.kubeconfig,
            "namespace": options.namespace,
            "image_pull_policy": "Never",
        }
    )
    return settings.model_copy(update={"engine": engine, "kubernetes": cluster})


async def run_ok(sandbox: Sandbox) -> RunResult:
    result = await sandbox.run(REQUEST)
    assert result.stdout == "ok\n", (result.stdout, result.stderr, result.violations, result.notes)
    return result


async def timed_run(sandbox: Sandbox) -> float:
    started = time.perf_counter()
    await run_ok(sandbox)
    return (time.perf_counter() - started) * 1000


async def pause() -> None:
    """A random pause of up to RELIST_S, so that the next run meets the relist at a random phase."""
    await anyio.sleep(random.uniform(0, RELIST_S))


async def cold(sandbox: Sandbox, runs: int, histogram: KubeletHistogram | None = None) -> list[float]:
    """Wall ms of ``runs`` runs one after another, each after a ``pause``; with ``histogram``, also
    after LATE_OBSERVATION_S, and the histogram read right before and right after each (untimed)."""
    samples = []
    for _ in range(runs):
        await pause()
        if histogram is None:
            samples.append(await timed_run(sandbox))
            continue
        await anyio.sleep(LATE_OBSERVATION_S)
        before = await histogram.read()
        samples.append(await timed_run(sandbox))
        histogram.windows.append((before, await histogram.read()))
    return samples


async def filled(sandbox: Sandbox) -> None:
    assert sandbox.pool is not None
    with anyio.fail_after(FILL_TIMEOUT_S):
        await sandbox.pool.filled()


async def warm(settings: Settings, runs: int) -> tuple[list[float], int]:
    """Wall ms of ``runs`` runs, each after the pool is full again; and how many of them were warm."""
    samples, warm_starts = [], 0
    async with Sandbox(settings) as sandbox:
        await filled(sandbox)
        await run_ok(sandbox)
        for _ in range(runs):
            await filled(sandbox)
            started = time.perf_counter()
            result = await run_ok(sandbox)
            samples.append((time.perf_counter() - started) * 1000)
            warm_starts += result.warm_start
    return samples, warm_starts


async def throughput(settings: Settings, calls: int, concurrency: int) -> tuple[float, int]:
    """Runs per second for ``calls`` runs from ``concurrency`` callers at once, the pool filled
    first; and how many of the runs were warm."""
    warm_starts = 0
    async with Sandbox(settings) as sandbox:
        await filled(sandbox)
        await run_ok(sandbox)
        await filled(sandbox)
        remaining = iter(range(calls))

        async def caller() -> None:
            nonlocal warm_starts
            for _ in remaining:
                result = await run_ok(sandbox)  # not in the +=, which reads the count before awaiting
                warm_starts += result.warm_start

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(concurrency):
                group.start_soon(caller)
        elapsed = time.perf_counter() - started
    return calls / elapsed, warm_starts


async def docker_cli(image: str, runs: int) -> list[float]:
    """Wall ms of ``runs`` plain `docker run --rm IMAGE python3 -c CODE`, after one untimed."""
    argv = ["docker", "run", "--rm", image, "python3", "-c", CODE]
    samples = []
    for index in range(runs + 1):
        await pause()
        started = time.perf_counter()
        done = await anyio.run_process(argv)
        assert done.stdout == b"ok\n", done
        if index:
            samples.append((time.perf_counter() - started) * 1000)
    return samples


Reading = dict[str, float]  # the histogram's "sum", "count", and "first_syncs" (under FIRST_SYNC_S)


class KubeletHistogram:
    """The kubelets' pod start histogram, summed over the nodes, and the (before, after) readings
    around each cold run."""

    def __init__(self, api: k8s.CoreV1Api):
        self.api = api
        self.windows: list[tuple[Reading, Reading]] = []

    async def read(self) -> Reading:
        return await anyio.to_thread.run_sync(self._read)

    def _read(self) -> Reading:
        totals = {"sum": 0.0, "count": 0.0, "first_syncs": 0.0}
        for node in self.api.list_node().items:
            assert node.metadata is not None
            assert node.metadata.name is not None
            metrics = self.api.connect_get_node_proxy_with_path(node.metadata.name, "metrics")
            for line in metrics.splitlines():
                if not (sample := _SAMPLE.match(line)):
                    continue
                kind, bound, value = sample.groups()
                if kind != "bucket":
                    totals[kind] += float(value)
                elif bound is not None and bound != "+Inf" and float(bound) == FIRST_SYNC_S:
                    totals["first_syncs"] += float(value)
        return totals

    def pod_starts(self) -> list[float]:
        """Ms of each pod start told apart: a window with one first sync and one other observation
        (its sum is the start's, plus the first sync's few ms)."""
        starts = []
        for before, after in self.windows:
            change = {key: after[key] - before[key] for key in after}
            if change["count"] == 2 and change["first_syncs"] == 1:
                starts.append(change["sum"] * 1000)
        return starts

    def whole_series(self) -> tuple[Reading, bool]:
        """What the histogram gained from the first run's start to the last one's end, and whether a
        kubelet restarted meanwhile (its counters start again from 0: counted as from 0 then)."""
        readings = [reading for window in self.windows for reading in window]
        gained, restarted = dict.fromkeys(readings[0], 0.0), False
        for earlier, later in itertools.pairwise(readings):
            reset = later["count"] < earlier["count"]
            restarted |= reset
            for key in gained:
                gained[key] += later[key] - (0 if reset else earlier[key])
        return gained, restarted


class PodStarts:
    """creationTimestamp and the container's startedAt of every pod of this process that a watch
    sees while the block lasts (a cold pod is deleted as its run returns: asking later is too late)."""

    def __init__(self, engine: KubernetesEngine):
        self.api = k8s.CoreV1Api(k8s.ApiClient(engine.configuration))
        self.namespace = engine.namespace
        self.selector = f"{OWNER_LABEL}={owner_digest(engine.owner)}"
        self.pods: dict[str, tuple[datetime.datetime, datetime.datetime | None]] = {}
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> PodStarts:
        listed = self.api.list_namespaced_pod(self.namespace, label_selector=self.selector)
        assert listed.metadata is not None
        self._version = listed.metadata.resource_version
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.api.api_client.close()

    def _follow(self) -> None:
        try:
            while not self._stop.is_set():  # short watches, so that stopping takes at most 1 s
                for event in watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.api.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=self._version,
                    timeout_seconds=1,
                ):
                    self._record(event["object"])
        except Exception as exc:  # reported with the table, never silent
            self.error = exc

    def _record(self, pod: k8s.V1Pod) -> None:
        assert pod.metadata is not None
        assert pod.metadata.name is not None
        self._version = pod.metadata.resource_version
        created, started = pod.metadata.creation_timestamp, None
        for container in (pod.status.container_statuses if pod.status else None) or ():
            state = container.state
            if state and state.running:
                started = state.running.started_at
            elif state and state.terminated:
                started = state.terminated.started_at
        if created is not None and (started is not None or pod.metadata.name not in self.pods):
            self.pods[pod.metadata.name] = (created, started)

    def seconds_to_start(self) -> list[int]:
        """Whole seconds from creation to the container's start, of each pod seen started."""
        return [round((s - c).total_seconds()) for c, s in self.pods.values() if s is not None]


async def nothing_left(engine: KubernetesEngine, client: docker.DockerClient) -> None:
    """Fail, loudly, if a pod or container of this process outlives the benchmark."""
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while (pods := await anyio.to_thread.run_sync(engine.our_pods)) and time.monotonic() < deadline:
        await anyio.sleep(0.5)
    containers = client.containers.list(all=True, filters={"label": f"{CONTAINER_OWNER_LABEL}={owner_id()}"})
    if pods or containers:
        removed = engine.close()
        for container in containers:
            container.remove(force=True)
        raise RuntimeError(  # not SystemExit: an error in flight stays in the traceback
            f"LEFT BEHIND after the benchmark: pods {pods} in namespace {engine.namespace}, "
            f"containers {[c.name for c in containers]} "
            f"(removed now: {removed} pods, {len(containers)} containers)"
        )


def machine(client: docker.DockerClient, engine: KubernetesEngine, image: str) -> str:
    health = engine.health([image], "")
    if health.problems:
        sys.exit(f"the Kubernetes cluster cannot run the sandboxes: {'; '.join(map(str, health.problems))}")
    nodes = engine.api.list_node().items
    runtimes = sorted(
        {n.status.node_info.container_runtime_version for n in nodes if n.status and n.status.node_info}
    )
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Docker {client.version()['Version']}, Kubernetes {health.version} "
        f"({len(nodes)} node{'s' if len(nodes) != 1 else ''}, {', '.join(runtimes)})"
    )


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def ms(value: float) -> str:
    return f"{value:.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="Timed runs per latency row (default 10).")
    parser.add_argument("--calls", type=int, default=12, help="Runs in the throughput row (default 12).")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="Callers at once for throughput (default 4)."
    )
    parser.add_argument(
        "--kubeconfig",
        default=os.environ.get("SANDBOX_TESTS_KUBECONFIG") or os.environ.get("KUBECONFIG", ""),
        help="The cluster's kubeconfig (default $SANDBOX_TESTS_KUBECONFIG, else $KUBECONFIG).",
    )
    parser.add_argument(
        "--namespace", default="agent-sandbox-test", help="Where the sandbox pods go (it must exist)."
    )
    options = parser.parse_args()
    if options.runs < 1 or options.calls < 1 or options.concurrency < 1:
        parser.error("--runs, --calls and --concurrency must be at least 1")
    runs = options.runs

    cluster = settings_for("kubernetes", options, 0)
    engine = KubernetesEngine(cluster.engine, cluster.kubernetes, cluster.limits.pids)
    client = docker.from_env()
    image = cluster.engine.image_of(cluster.engine.profile)
    print(f"# {machine(client, engine, image)}")
    print(
        f"# {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
        f"`{CODE}` through `Sandbox.run` in-process"
    )
    print()

    latency: dict[str, dict[str, list[float]]] = {"cold": {}, "warm": {}}
    warm_starts: dict[str, int] = {}
    try:
        on_docker = Sandbox(settings_for("docker", options, 0))
        await run_ok(on_docker)  # untimed, as every row's first run: clients connect, caches fill
        latency["cold"]["docker"] = await cold(on_docker, runs)
        on_kubernetes = Sandbox(settings_for("kubernetes", options, 0), engine)
        await run_ok(on_kubernetes)
        histogram = KubeletHistogram(engine.api)
        with PodStarts(engine) as pods:
            latency["cold"]["kubernetes"] = await cold(on_kubernetes, runs, histogram)
        for backend in BACKENDS:
            latency["warm"][backend], warm_starts[backend] = await warm(
                settings_for(backend, options, WARM_POOL), runs
            )
        plain = await docker_cli(image, runs)
        rates = {}
        for backend in BACKENDS:
            settings = settings_for(backend, options, options.concurrency, options.concurrency)
            rates[backend] = await throughput(settings, options.calls, options.concurrency)
    finally:  # on every path: a failed run must not hide a leak
        await nothing_left(engine, client)

    print(
        row(
            f"latency of `{CODE}`, {runs} runs, ms",
            "Docker median",
            "p95",
            "Kubernetes median",
            "p95",
            "x Docker",
        )
    )
    print(row("---", *["---:"] * 5))
    names = {"cold": "cold (pool off)", "warm": f"warm (pool of {WARM_POOL}, filled before each call)"}
    for mode, name in names.items():
        docker_ms, k8s_ms = latency[mode]["docker"], latency[mode]["kubernetes"]
        ratio = statistics.median(k8s_ms) / statistics.median(docker_ms)
        cells = [
            ms(statistics.median(docker_ms)),
            ms(p95(docker_ms)),
            ms(statistics.median(k8s_ms)),
            ms(p95(k8s_ms)),
        ]
        print(row(name, *cells, f"{ratio:.2f}"))
    print(
        row(
            "`docker run --rm IMAGE python3 -c` (CLI, no hardening)",
            ms(statistics.median(plain)),
            ms(p95(plain)),
            "",
            "",
            "",
        )
    )
    unwarmed = {b: runs - n for b, n in warm_starts.items() if n < runs}
    if unwarmed:
        print(f"\nwarm rows: runs that found no warm sandbox and started cold: {unwarmed}")

    print()
    title = f"throughput, {options.calls} calls, {options.concurrency} at once, pool of {options.concurrency}"
    print(row(title, "Docker", "Kubernetes", "x Docker"))
    print(row("---", *["---:"] * 3))
    (docker_rate, docker_warm), (k8s_rate, k8s_warm) = rates["docker"], rates["kubernetes"]
    print(row("runs/s", f"{docker_rate:.2f}", f"{k8s_rate:.2f}", f"{k8s_rate / docker_rate:.2f}"))
    print(
        row(
            "runs that found a warm sandbox",
            f"{docker_warm}/{options.calls}",
            f"{k8s_warm}/{options.calls}",
            "",
        )
    )

    print()
    print(row(f"start of the {runs} timed cold Kubernetes pods, as the cluster measured it", "value"))
    print(row("---", "---:"))
    starts = histogram.pod_starts()
    name = f"`{METRIC}` per pod (kubelet first sees it → finds it running): median / p95 / mean, ms"
    if starts:
        figures = [statistics.median(starts), p95(starts), statistics.fmean(starts)]
        print(row(name, " / ".join(map(ms, figures))))
        cold_median = statistics.median(latency["cold"]["kubernetes"])
        share = statistics.median(starts) / cold_median
        print(row("its median, as a share of the Kubernetes cold median", f"{share:.0%}"))
    else:
        print(row(name, "no pod told apart"))
    print(
        row("pods told apart (their window held just their own two observations)", f"{len(starts)} of {runs}")
    )
    series, restarted = histogram.whole_series()
    others = series["count"] - series["first_syncs"]
    mean = f"{series['sum'] / others * 1000:.1f}" if others else "-"
    print(
        row(
            f"the whole series: observations / first syncs (under {FIRST_SYNC_S:g} s) / others, "
            "and the others' mean, ms (sum/count: not a pod start, see above)",
            f"{series['count']:.0f} / {series['first_syncs']:.0f} / {others:.0f}, {mean}",
        )
    )
    seconds = pods.seconds_to_start()
    if seconds:
        spread = ", ".join(f"{s} s: {n}" for s, n in sorted(collections.Counter(seconds).items()))
        median = statistics.median(seconds)
        print(
            row(
                "creationTimestamp → container startedAt, 1 s resolution: median (pods per whole second)",
                f"{median:g} s ({spread})",
            )
        )
    else:
        print(row("creationTimestamp → container startedAt", "no pod seen started"))
    notes = []
    if len(seconds) != runs:
        notes.append(f"the watch saw {len(seconds)} of the {runs} cold pods start")
    if pods.error is not None:
        notes.append(f"the watch stopped: {pods.error}")
    if restarted:
        notes.append("a kubelet restarted during the cold runs (its histogram's counters went back to 0)")
    for note in notes:
        print(f"\nnote: {note}")


if __name__ == "__main__":
    anyio.run(main)
