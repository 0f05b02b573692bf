"""The official MCP conformance suite against the real Streamable HTTP server."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .conftest import ROOT, serving

TOOLS = ROOT / ".tools" / "conformance" / "node_modules" / ".bin"
EXPECTED_FAILURES = Path(__file__).with_name("conformance-expected-failures.yml")
GENERIC = [
    "server-initialize",
    "ping",
    "tools-list",
    "resources-list",
    "prompts-list",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
]


def test_every_generic_scenario_passes_and_only_fixture_scenarios_fail() -> None:
    conformance = TOOLS / "conformance"
    assert conformance.exists(), "the conformance suite is missing: `make conformance-tools` installs it"
    with serving("streamable-http") as (url, _, _):
        done = subprocess.run(
            [conformance, "server", "--url", f"{url}/mcp", "--suite", "active",
             "--expected-failures", EXPECTED_FAILURES],
            capture_output=True,
            text=True,
            env={**os.environ, "PATH": f"{TOOLS}{os.pathsep}{os.environ['PATH']}"},
            timeout=900,
        )  # fmt: skip
    summary = done.stdout[done.stdout.find("=== SUMMARY ===") :]
    assert done.returncode == 0, summary or done.stderr[-3000:]
    for scenario in GENERIC:
        assert f"✓ {scenario}:" in summary, summary
