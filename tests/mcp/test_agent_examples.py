"""The agent-framework examples under examples/agents/ answer through the real server and sandbox.

Offline, each example's scripted model asks run_python for a statistic of a fixed data set and
answers with what came back; only a real run in a real container can produce that number. The
LangChain example runs in a virtual environment of its own (`make client-venvs`): its MCP adapters
require the 1.x `mcp` SDK.
"""

from __future__ import annotations

import os
import runpy
import statistics
import subprocess
import sys

import docker
import pytest

from agent_sandbox.engine.docker import LABEL, OWNER_LABEL, DockerEngine
from agent_sandbox.engine.launch import owner_id, owner_place

from .conftest import ROOT

AGENTS = ROOT / "examples" / "agents"
EXAMPLES = ["pydantic_ai_agent.py", "openai_agents_sdk.py", "langchain_agent.py"]
# Examples that run in an environment of their own, not this one (examples/agents/requirements-*.txt).
INTERPRETERS = {"langchain_agent.py": ROOT / ".tools" / "venv-langchain" / "bin" / "python"}
# Anything that tried the network anyway would hit a closed loopback port.
NO_NETWORK = {f"{v}_proxy": "http://127.0.0.1:9" for v in ("http", "https", "HTTP", "HTTPS", "all", "ALL")}


def offline_env(**extra: str) -> dict[str, str]:
    """This environment without any model or API key, so the examples run their scripted model."""
    env = {k: v for k, v in os.environ.items() if k != "AGENT_MODEL" and not k.endswith("_API_KEY")}
    return {**env, **NO_NETWORK, **extra}


def run_example(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    python = INTERPRETERS.get(name)
    if python is not None and not python.exists():
        pytest.fail(f"{name} runs in {python.parents[1]}, which is not there: run `make client-venvs`")
    return subprocess.run(
        [str(python or sys.executable), str(AGENTS / name)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def orphans(client: docker.DockerClient, before: set[str]) -> list[str]:
    """Containers that appeared since `before` and outlived the server (on this host) that made them.
    Other tests' live servers may run containers meanwhile: those owners are still alive."""
    left = []
    here = owner_place(owner_id())
    for summary in client.api.containers(all=True, filters={"label": LABEL}):
        owner = (summary.get("Labels") or {}).get(OWNER_LABEL, "")
        pid = owner.rpartition(":")[2]
        alive = pid.isdigit() and os.path.exists(f"/proc/{pid}")
        if summary["Id"] not in before and owner_place(owner) == here and not alive:
            left.append(summary["Names"][0].lstrip("/"))
    return left


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_example_answers_with_what_the_sandbox_computed(
    name: str, engine: DockerEngine, docker_client: docker.DockerClient
) -> None:
    sales = runpy.run_path(str(AGENTS / "sales_question.py"))["SALES"]
    best = max(sales, key=sales.get)
    stdev = f"{statistics.stdev(sales.values()):.4f}"
    before = {c["Id"] for c in docker_client.api.containers(all=True, filters={"label": LABEL})}

    done = run_example(name, offline_env())

    assert done.returncode == 0, done.stderr
    log, _, answer = done.stdout.partition("\nanswer: ")
    assert "tool calls:\n  -> run_python, code:" in log
    assert "exit_code=0" in log
    assert stdev not in log.split("<-")[0], "the number must come back from the sandbox, not go in"
    assert answer.strip() == f"{best} had the highest sales; the sample standard deviation is {stdev}"
    assert orphans(docker_client, before) == []


@pytest.mark.parametrize(
    ("name", "model", "says"),
    [
        ("pydantic_ai_agent.py", "no-such-model", "Unknown model: no-such-model"),
        ("pydantic_ai_agent.py", "openai:no-such-model", "OPENAI_API_KEY"),
        ("openai_agents_sdk.py", "no-such-model", "set OPENAI_API_KEY"),
        ("langchain_agent.py", "no-such-model", "Unable to infer model provider"),
        ("langchain_agent.py", "openai:no-such-model", "requires the langchain-openai package"),
    ],
)
def test_a_model_without_a_key_fails_before_any_request(name: str, model: str, says: str) -> None:
    """Exits with a one-line reason, before starting the server or opening a connection."""
    done = run_example(name, offline_env(AGENT_MODEL=model))
    assert done.returncode == 1
    assert done.stderr.startswith(f"cannot use model {model!r}: ")
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
