"""What a background run costs against a foreground one, and how soon a client sees what the
program prints: through a real MCP client over stdio against `agent-sandbox serve` (warm pool of
2, the default), with the server's run records in a temporary folder.

Set A, for `print("hi")` and for a program that sleeps 2 s first: the wall time from issuing the
call to holding the final structured result, --runs calls of each mode, --gap seconds before
each (the pool refills), in ABBA order so that drift on the machine falls on both modes alike:
  - foreground: one `run_python` call,
  - background: `run_python` with background=true, then one `run_result(run_id, wait_s=60)`,
  - the background start call alone (until the run_id is in hand).
Median and p95, the ratio of medians to the foreground row, and how many results ran in a warm
container (a cold start would otherwise pass for the cost of a mode).

Set B, a program printing --lines lines --spacing seconds apart, each carrying the sandbox's
`time.time()` (a runc container reads the host's kernel clock): the delay from each print to the
client holding the line, median, p95 and max over the lines, the first line's (it goes at
once; later notifications come at most 4 a second), and how many lines were seen:
  - in the progress notifications of a foreground call ("output: ..."),
  - in `run_status`'s stdout_tail, polled --poll seconds apart on a background run: bounded
    above by the poll period plus one call, so it measures the polling more than the server.

Last, the containers this benchmark's server left behind: there must be none.

    .venv/bin/python benchmarks/background.py [--runs 20] [--gap 0.2] [--lines 20] [--spacing 0.5]
                                              [--poll 0.2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import docker
from latency import p95
from mcp import Client, StdioServerParameters
from mcp.shared.dispatcher import ProgressFnT

from agent_sandbox.engine.docker import OWNER_LABEL
from agent_sandbox.engine.launch import owner_id

HI = 'print("hi")'
NAP = 'import time\ntime.sleep(2)\nprint("hi")'
PROGRAMS = {'print("hi")': HI, "sleep 2 s, print": NAP}
WAIT_S = 60  # run_result's wait: far beyond either program, so one call always gets the result
OUTPUT = "output: "  # how a progress notification carrying the program's output begins
STAMP = re.compile(r"^printed at (\d+\.\d+)$", re.MULTILINE)
IN_FLIGHT = ("queued", "running")
POOL = 2  # the server's default warm pool, set so that an inherited environment cannot change it


def ticker(lines: int, spacing_s: float) -> str:
    """Prints ``lines`` stamped lines, then sleeps, so the last line is followed like the others."""
    return (
        "import time\n"
        f"for _ in range({lines}):\n"
        "    print(f'printed at {time.time():.6f}', flush=True)\n"
        f"    time.sleep({spacing_s})\n"
    )


async def call(
    client: Client, tool: str, arguments: dict[str, Any], on_progress: ProgressFnT | None = None
) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments, progress_callback=on_progress)
    assert not result.is_error, result.content
    content: dict[str, Any] | None = result.structured_content
    assert content is not None, result.content
    return content


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def costs(
    client: Client, code: str, runs: int, gap_s: float
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Set A for one program: each row's samples, and the warm starts of the rows with a result."""
    samples: dict[str, list[float]] = {"foreground": [], "background": [], "start": []}
    warm = {"foreground": 0, "background": 0}

    def holds_result(mode: str, result: dict[str, Any]) -> None:
        assert result.get("stdout") == "hi\n", result
        warm[mode] += result["warm_start"]

    async def foreground() -> None:
        started = time.perf_counter()
        result = await call(client, "run_python", {"code": code})
        samples["foreground"].append(elapsed_ms(started))
        holds_result("foreground", result)

    async def background() -> None:
        started = time.perf_counter()
        status = await call(client, "run_python", {"code": code, "background": True})
        samples["start"].append(elapsed_ms(started))
        result = await call(client, "run_result", {"run_id": status["run_id"], "wait_s": WAIT_S})
        samples["background"].append(elapsed_ms(started))
        holds_result("background", result)

    for index in range(runs):
        for mode in (foreground, background) if index % 2 == 0 else (background, foreground):
            await anyio.sleep(gap_s)
            await mode()
    return samples, warm


def note_lines(text: str, delays: dict[float, float]) -> None:
    """The delay of each stamped line in ``text``, the first time the client holds it."""
    now = time.time()
    for match in STAMP.finditer(text):
        printed = float(match[1])
        delays.setdefault(printed, now - printed)


async def progress_delays(client: Client, code: str, timeout_s: float) -> dict[float, float]:
    delays: dict[float, float] = {}

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message is not None and message.startswith(OUTPUT):
            note_lines(message.removeprefix(OUTPUT), delays)

    result = await call(client, "run_python", {"code": code, "timeout_s": timeout_s}, on_progress)
    assert result["exit_code"] == 0, result
    return delays


async def polled_delays(client: Client, code: str, timeout_s: float, poll_s: float) -> dict[float, float]:
    delays: dict[float, float] = {}
    arguments = {"code": code, "timeout_s": timeout_s, "background": True}
    status = await call(client, "run_python", arguments)
    run_id = status["run_id"]
    while status["state"] in IN_FLIGHT:
        await anyio.sleep(poll_s)
        status = await call(client, "run_status", {"run_id": run_id})
        note_lines(status["stdout_tail"], delays)  # the last status, once finished, has them all
    assert status["state"] == "finished", status
    return delays


def server_pid(runs_dir: str) -> int:
    """The server this benchmark started: the process whose environment names its runs dir."""
    marker = f"AGENT_SANDBOX_RUNS__DIR={runs_dir}".encode()
    for name in filter(str.isdigit, os.listdir("/proc")):
        with suppress(OSError):
            if marker in Path(f"/proc/{name}/environ").read_bytes().split(b"\0"):
                return int(name)
    raise RuntimeError("the server process was not found")


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def ms(value: float) -> str:
    return f"{value:.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="Calls per program per mode (default 20).")
    parser.add_argument("--gap", type=float, default=0.2, help="Seconds before each call (default 0.2).")
    parser.add_argument("--lines", type=int, default=20, help="Lines the set B program prints (default 20).")
    parser.add_argument("--spacing", type=float, default=0.5, help="Seconds between them (default 0.5).")
    parser.add_argument(
        "--poll", type=float, default=0.2, help="Seconds between run_status calls (default 0.2)."
    )
    options = parser.parse_args()
    if options.runs < 1 or options.lines < 1:
        parser.error("--runs and --lines must be at least 1")
    runs, lines = options.runs, options.lines
    client = docker.from_env()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Docker {client.version()['Version']}")
    print(
        f"# {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; MCP stdio, warm pool of {POOL}; "
        f"set A: {runs} calls per program per mode, {options.gap:g} s apart; "
        f"set B: {lines} lines {options.spacing:g} s apart"
    )
    print()

    with tempfile.TemporaryDirectory(prefix="bench-background-") as folder:
        runs_dir = str(Path(folder) / "runs")
        env = {
            **os.environ,
            "AGENT_SANDBOX_RUNS__DIR": runs_dir,
            "AGENT_SANDBOX_ENGINE__POOL_SIZE": str(POOL),
            # A tight --gap 0 loop of hello worlds would pass the default 120 runs a minute.
            "AGENT_SANDBOX_SERVER__RUNS_PER_MINUTE_PER_CLIENT": "0",
        }
        parameters = StdioServerParameters(
            command=sys.executable, args=["-m", "agent_sandbox", "serve"], env=env
        )
        ticking = ticker(lines, options.spacing)
        timeout_s = lines * options.spacing + 30
        async with Client(parameters, mode="legacy") as mcp:
            pid = server_pid(runs_dir)
            await anyio.sleep(2)  # let the pool fill
            await costs(mcp, HI, 1, options.gap)  # untimed: the first call of each mode
            cost = {name: await costs(mcp, code, runs, options.gap) for name, code in PROGRAMS.items()}
            await anyio.sleep(options.gap)
            delays = {
                "progress notifications of a foreground run_python": await progress_delays(
                    mcp, ticking, timeout_s
                ),
                f"run_status polled every {options.poll:g} s, background run": await polled_delays(
                    mcp, ticking, timeout_s, options.poll
                ),
            }
    # Only this server's containers: other work on the machine may run sandboxes of its own.
    leaked = len(client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner_id(pid)}"}))

    print(row("A: call to final result in hand, ms", "median", "p95", "x foreground", "warm"))
    print(row("---", *["---:"] * 4))
    for program, (samples, warm) in cost.items():
        baseline = statistics.median(samples["foreground"])
        for mode, name in (
            ("foreground", "foreground run_python"),
            ("background", "background start + run_result(wait_s=60)"),
            ("start", "background start alone (run_id in hand)"),
        ):
            median = statistics.median(samples[mode])
            started_warm = f"{warm[mode]}/{runs}" if mode in warm else ""
            cells = (ms(median), ms(p95(samples[mode])), f"{median / baseline:.2f}", started_warm)
            print(row(f"{program}: {name}", *cells))
    print()
    header = ("median", "p95", "max", "first line", "lines seen")
    print(row("B: print in the sandbox to the client holding it, ms", *header))
    print(row("---", *["---:"] * 5))
    for name, seen in delays.items():
        values = sorted(delay * 1000 for delay in seen.values())
        figures = [statistics.median(values), p95(values), values[-1], seen[min(seen)] * 1000] if seen else []
        print(row(name, *map(ms, figures or [float("nan")] * 4), f"{len(values)}/{lines}"))
    print(f"\n# the run_status row is bounded by its poll period ({options.poll:g} s) plus one call")
    print(f"leaked containers: {leaked}")
    if leaked:
        sys.exit(f"the server left {leaked} containers behind")


if __name__ == "__main__":
    anyio.run(main)
