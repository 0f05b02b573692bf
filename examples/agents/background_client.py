"""A long run through the official `mcp` client, over stdio: start it in the background, follow
its output, collect its result. Every call returns within seconds, whatever the run's length, so
no client timeout is ever near.

    .venv/bin/python examples/agents/background_client.py
"""

from __future__ import annotations

import sys

import anyio
from mcp import Client, StdioServerParameters

# Stands in for a model fit: a few "epochs", a line each.
TRAINING = """import time
for epoch in range(1, 5):
    time.sleep(1)
    print(f"epoch {epoch}: loss {1 / epoch:.3f}", flush=True)
"""


async def main() -> None:
    server = StdioServerParameters(command=sys.executable, args=["-m", "agent_sandbox", "serve"])
    async with Client(server) as client:
        started = await client.call_tool(
            "run_python", {"code": TRAINING, "timeout_s": 1800, "background": True}
        )
        run_id = started.structured_content["run_id"]  # type: ignore[index]
        print("started", run_id)
        shown = 0
        while True:
            # Waits up to wait_s for the end; meanwhile it is the status, with the output so far.
            answer = (
                await client.call_tool("run_result", {"run_id": run_id, "wait_s": 1.5})
            ).structured_content
            assert answer is not None
            if "exit_code" in answer:  # the RunResult: the same a foreground call returns
                print(answer["stdout"].encode()[shown:].decode(errors="replace"), end="")
                print("exit code", answer["exit_code"], "in", answer["duration_s"], "s")
                return
            if answer["state"] not in ("queued", "running"):  # cancelled, lost or failed
                print("ended without a result:", answer["state"], answer["error"])
                return
            tail = answer["stdout_tail"].encode()  # the last lines so far, of stdout_bytes in all
            new = min(answer["stdout_bytes"] - shown, len(tail))
            if new > 0:
                print(tail[len(tail) - new :].decode(errors="replace"), end="")
                shown = answer["stdout_bytes"]


if __name__ == "__main__":
    anyio.run(main)
