"""The client examples under examples/agents/ work as shipped."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT

AGENTS = ROOT / "examples" / "agents"


def test_the_python_client_example_runs_both_tools() -> None:
    done = subprocess.run(
        [sys.executable, str(AGENTS / "python_client.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "tools: run_python, run_project" in done.stdout
    assert "2432902008176640000" in done.stdout
    assert '"stdout": "mean: 5.0\\n"' in done.stdout


def test_every_client_config_names_the_stdio_server() -> None:
    configs = {
        "claude_desktop_config.json": "mcpServers",
        "cursor_mcp.json": "mcpServers",
        "vscode/mcp.json": "servers",
    }
    for name, key in configs.items():
        server = json.loads((AGENTS / name).read_text())[key]["agent-sandbox"]
        assert server["command"].endswith("/.venv/bin/agent-sandbox"), name
        assert server["args"] == ["serve"], name


def test_the_background_client_example_follows_a_long_run() -> None:
    done = subprocess.run(
        [sys.executable, str(AGENTS / "background_client.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("started ")
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert epochs == [f"epoch {n}: loss {1 / n:.3f}" for n in range(1, 5)]  # each once, in order
    assert lines[-1].startswith("exit code 0 in ")
