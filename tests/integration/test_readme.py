"""Every command the documentation shows is exercised: run here verbatim, shown here to print
what the page says it prints, or named with the test (or CI step) that runs it. The pages are
README.md and every docs/*.md; the documentation site built from them builds strictly.

The commands are every line of the pages' `sh` and `console` blocks, the commands in the
Troubleshooting page's table, and the `claude mcp add` line (Claude Code is not on a CI machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from mcp_types import Implementation

from agent_sandbox.config import GVISOR
from agent_sandbox.engine.docker import DockerEngine
from tests.helpers import skip_unless_offered
from tests.mcp.conftest import serving

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[2]
# Each page as its path from the root, README first: the example calls are made in this order.
PAGES = {
    page.relative_to(ROOT).as_posix(): page.read_text()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
}
README_MAX_LINES = 250  # a landing page; the rest is in docs/
AGENTS = ROOT / "examples" / "agents"
VERBATIM = "tests/integration/test_readme.py::test_the_command_runs_as_written"
HTTP = "tests/integration/test_readme.py::test_the_http_commands_run_as_written_on_a_free_port"
TRANSCRIPT = "tests/integration/test_readme.py::test_the_command_prints_what_the_page_shows"
DETACHED = "tests/integration/test_cli.py::test_a_detached_run_is_followed_with_the_runs_commands"
CI = "CI: .ci/run runs `make test`, which runs the `engine`, `image`, `lint` and test targets"
CLUSTER = "CI: `make test` runs every test, tests/kubernetes too, inside `scripts/ensure-cluster.sh run`"
# The test overlay of deploy/kubernetes applied and rolled out, with a Secret of its own.
DEPLOYED = "tests/kubernetes/test_deploy.py::deployed"
MATRIX = "tests/mcp/test_clients.py::test_the_client_lists_the_tools_and_calls_both"

# Where each command is exercised. A command added to a page without an entry here, or an entry
# whose command left every page, fails test_every_shown_command_is_exercised.
EXERCISED = {
    "make image": VERBATIM,
    "make serve": VERBATIM,
    "make test": CI,
    "bash scripts/ensure-engine.sh": CI,
    ".venv/bin/agent-sandbox doctor": TRANSCRIPT,
    ".venv/bin/agent-sandbox --config configs/strict.toml doctor": TRANSCRIPT,
    ".venv/bin/agent-sandbox --config configs/oci.toml doctor": TRANSCRIPT,
    ".venv/bin/agent-sandbox image build": VERBATIM,
    "agent-sandbox serve": VERBATIM,
    "docker ps -a --filter label=io.agent-sandbox": VERBATIM,
    ".venv/bin/pip config list": VERBATIM,
    ".venv/bin/agent-sandbox run examples/hello.py -- a b": TRANSCRIPT,
    ".venv/bin/agent-sandbox run --timeout 1 --out results examples/slow.py": TRANSCRIPT,
    ".venv/bin/python examples/agents/python_client.py": (
        "tests/mcp/test_examples.py::test_the_python_client_example_runs_both_tools"
    ),
    ".venv/bin/python examples/agents/background_client.py": (
        "tests/mcp/test_examples.py::test_the_background_client_example_follows_a_long_run"
    ),
    ".venv/bin/python examples/agents/pydantic_ai_agent.py": (
        "tests/mcp/test_agent_examples.py::test_the_example_answers_with_what_the_sandbox_computed"
    ),
    ".venv/bin/python examples/agents/openai_agents_sdk.py": (
        "tests/mcp/test_agent_examples.py::test_the_example_answers_with_what_the_sandbox_computed"
    ),
    # Needs a real key; the test runs the same path up to where the key is checked.
    "AGENT_MODEL=openai:gpt-4o OPENAI_API_KEY=sk-... .venv/bin/python examples/agents/pydantic_ai_agent.py": (
        "tests/mcp/test_agent_examples.py::test_a_model_without_a_key_fails_before_any_request"
    ),
    "claude mcp add agent-sandbox -- /ABSOLUTE/PATH/TO/agent-sandbox/.venv/bin/agent-sandbox serve": (
        "tests/integration/test_readme.py::test_the_client_configs_start_the_server_the_pages_start"
    ),
    ".venv/bin/agent-sandbox run --detach examples/slow.py": DETACHED,
    ".venv/bin/agent-sandbox runs list": DETACHED,
    ".venv/bin/agent-sandbox runs status RUN_ID": DETACHED,
    ".venv/bin/agent-sandbox runs result RUN_ID --wait 60": DETACHED,
    ".venv/bin/agent-sandbox runs cancel RUN_ID": DETACHED,
    ".venv/bin/python benchmarks/background.py": (
        "tests/integration/test_benchmarks.py::test_background_benchmark_runs_every_row"
    ),
    "agent-sandbox serve --transport streamable-http --port 8000": HTTP,
    "agent-sandbox serve --transport sse --port 8000": HTTP,
    "curl http://127.0.0.1:8000/healthz": HTTP,
    'curl -H "Authorization: Bearer $AGENT_SANDBOX_SERVER__AUTH_TOKEN" http://127.0.0.1:8000/metrics': HTTP,
    "make server-image": "tests/integration/test_readme.py::test_the_server_image_commands_run_as_written",
    'docker run -i --rm --network none -v /var/run/docker.sock:/var/run/docker.sock --group-add "$(stat -c %g /var/run/docker.sock)" agent-sandbox-server:latest': (
        "tests/integration/test_readme.py::test_the_server_image_commands_run_as_written"
    ),
    ".venv/bin/python benchmarks/latency.py --chart docs/latency.png": (
        "tests/integration/test_benchmarks.py::test_latency_runs_every_row_and_draws_the_chart"
    ),
    ".venv/bin/python benchmarks/profile.py": (
        "tests/integration/test_benchmarks.py::test_the_profile_prints_the_split_of_a_warm_call"
    ),
    ".venv/bin/python benchmarks/throughput.py": (
        "tests/integration/test_benchmarks.py::test_throughput_runs_every_row_and_leaves_nothing"
    ),
    ".venv/bin/python benchmarks/packages.py": "tests/integration/test_benchmarks.py::test_the_other_benchmarks_run",
    ".venv/bin/python benchmarks/workspaces.py": "tests/integration/test_benchmarks.py::test_the_other_benchmarks_run",
    ".venv/bin/python benchmarks/state.py": "tests/integration/test_benchmarks.py::test_the_other_benchmarks_run",
    ".venv/bin/python benchmarks/runtimes.py": "tests/integration/test_benchmarks.py::test_the_runtime_cost_benchmark_runs",
    "SANDBOX_TESTS_KUBECONFIG=/var/lib/agent-sandbox-kubernetes/admin.kubeconfig .venv/bin/python benchmarks/backends.py": (
        "tests/integration/test_benchmarks.py::test_the_backends_benchmark_runs_every_row"
    ),
    "kubectl apply -k deploy/kubernetes": DEPLOYED,
    "kubectl create secret generic agent-sandbox-token -n agent-sandbox --from-literal=token="
    "\"$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')\"": DEPLOYED,
    "kubectl -n agent-sandbox rollout status deployment/agent-sandbox-server": DEPLOYED,
    "kubectl create namespace agent-sandbox": "tests/conftest.py::kubernetes_engine",
    # What doctor prints on Kubernetes is the engine's health, checked there against the cluster.
    "AGENT_SANDBOX_KUBERNETES__KUBECONFIG=$HOME/.kube/config agent-sandbox --config configs/kubernetes.toml doctor": (
        "tests/kubernetes/test_engine.py::test_healthz_reports_the_cluster"
    ),
    "agent-sandbox --config configs/kubernetes.toml serve": "tests/mcp/test_transports.py::test_stdio",
    "bash scripts/ensure-cluster.sh up agent-sandbox:minimal": CLUSTER,
    "export KUBECONFIG=/var/lib/agent-sandbox-kubernetes/admin.kubeconfig": CLUSTER,
    "SANDBOX_TESTS_KUBECONFIG=$KUBECONFIG .venv/bin/pytest tests/kubernetes": CLUSTER,
    "bash scripts/ensure-cluster.sh down": CLUSTER,
    # docs/clients.md: the client matrix.
    "make client-venvs mcp-clients": CI,
    ".venv/bin/agent-sandbox serve --transport streamable-http --port 8000": MATRIX,
    ".venv/bin/python tests/mcp/clients/mcp2_client.py stdio .venv/bin/agent-sandbox serve": MATRIX,
    ".tools/venv-mcp1/bin/python tests/mcp/clients/mcp1_client.py stdio .venv/bin/agent-sandbox serve": MATRIX,
    ".tools/conformance/node_modules/.bin/node tests/mcp/clients/matrix_client.mjs sdk stdio .venv/bin/agent-sandbox serve": MATRIX,
    ".tools/conformance/node_modules/.bin/node tests/mcp/clients/matrix_client.mjs client stdio .venv/bin/agent-sandbox serve": MATRIX,
    ".tools/conformance/node_modules/.bin/node tests/mcp/clients/matrix_client.mjs client-auto stdio .venv/bin/agent-sandbox serve": MATRIX,
    ".venv/bin/python tests/mcp/clients/mcp2_client.py http http://127.0.0.1:8000/mcp": MATRIX,
    ".tools/venv-mcp1/bin/python tests/mcp/clients/mcp1_client.py http http://127.0.0.1:8000/mcp": MATRIX,
    ".tools/conformance/node_modules/.bin/node tests/mcp/clients/matrix_client.mjs sdk http http://127.0.0.1:8000/mcp": MATRIX,
    ".tools/conformance/node_modules/.bin/node tests/mcp/clients/matrix_client.mjs client http http://127.0.0.1:8000/mcp": MATRIX,
    ".tools/conformance/node_modules/.bin/node tests/mcp/clients/matrix_client.mjs client-auto http http://127.0.0.1:8000/mcp": MATRIX,
    ".tools/venv-langchain/bin/python examples/agents/langchain_agent.py": (
        "tests/mcp/test_agent_examples.py::test_the_example_answers_with_what_the_sandbox_computed"
    ),
    "AGENT_MODEL=openai:gpt-4o OPENAI_API_KEY=sk-... .tools/venv-langchain/bin/python examples/agents/langchain_agent.py": (
        "tests/mcp/test_agent_examples.py::test_a_model_without_a_key_fails_before_any_request"
    ),
}
TYPED = ("make ", ".venv/bin/", "bash ", "docker ", "curl ")


def blocks(language: str) -> list[tuple[str, str]]:
    """Each ```language block of every page: (page, body)."""
    return [
        (page, body)
        for page, text in PAGES.items()
        for body in re.findall(rf"```{language}\n(.*?)```", text, re.S)
    ]


def shown_commands() -> dict[str, str]:
    """Every command the pages show, with the first page that shows it."""
    shown: dict[str, str] = {}
    for page, text in PAGES.items():
        commands = []
        for language, body in re.findall(r"```(sh|console)\n(.*?)```", text, re.S):
            for line in body.replace("\\\n", " ").splitlines():
                if language == "console":
                    commands += [line.removeprefix("$ ")] if line.startswith("$ ") else []
                elif line.strip() and not line.startswith("#"):
                    commands.append(" ".join(line.split("  #")[0].split()))
        if page == "docs/troubleshooting.md":
            spans = re.findall(r"`([^`\n]+)`", text)
            commands += [span for span in spans if span.startswith(TYPED) and " " in span]  # not a bare path
        commands += re.findall(r"`(claude [^`\n]+)`", text)
        for command in commands:
            shown.setdefault(command, page)
    return shown


def test_every_shown_command_is_exercised() -> None:
    shown = shown_commands()
    unexercised = {command: page for command, page in shown.items() if command not in EXERCISED}
    assert unexercised == {}, "commands the pages show that no test exercises"
    assert EXERCISED.keys() - shown.keys() == set(), "entries for commands no page shows any more"
    for where in set(EXERCISED.values()) - {CI, CLUSTER}:
        path, _, name = where.partition("::")
        assert f"def {name}(" in (ROOT / path).read_text(), f"{where} does not exist"


def test_the_readme_is_a_landing_page() -> None:
    lines = PAGES["README.md"].count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move the detail to a page in docs/"


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs.yml's build, as `make docs` runs it: a broken link, anchor or nav entry fails it."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "index.html").exists()


def shell(
    command: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` as a person would in a shell in ``cwd``, with the venv's commands on PATH."""
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", **(env or {})}
    return subprocess.run(
        ["bash", "-c", command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


@pytest.mark.parametrize("command", [command for command, where in EXERCISED.items() if where == VERBATIM])
def test_the_command_runs_as_written(command: str) -> None:
    """Servers among them serve over stdio, so a closed stdin ends them cleanly."""
    done = shell(command)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    if "serve" in command:
        assert "serving MCP over stdio" in done.stderr


def test_the_server_image_commands_run_as_written() -> None:
    """The image builds, and the pages' `docker run` serves MCP over stdio until stdin closes."""
    build, run = (
        command for command in shown_commands() if command.startswith(("make server-image", "docker run"))
    )
    done = shell(build)
    assert done.returncode == 0, done.stderr[-3000:]
    done = shell(run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "serving MCP over stdio" in done.stderr


def test_the_http_commands_run_as_written_on_a_free_port() -> None:
    """Each HTTP serve command as written (on a free port, not 8000) and the curl lines against
    it: /healthz answers what the page shows; /metrics with the page's token, set or not."""
    (shown_health,) = [json.loads(body) for _, body in blocks("json") if body.startswith('{"status":"ok"')]
    curls = [command for command, where in EXERCISED.items() if where == HTTP and command.startswith("curl")]
    serves = [command for command, where in EXERCISED.items() if where == HTTP and "serve" in command]
    venv = {"PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "AGENT_SANDBOX_SERVER__AUTH_TOKEN": ""}
    with_token = {**venv, "AGENT_SANDBOX_SERVER__AUTH_TOKEN": secrets.token_urlsafe(24)}
    for command, env in [*((serve, venv) for serve in serves), (serves[0], with_token)]:
        words = shlex.split(command)
        transport = words[words.index("--transport") + 1]
        with serving(transport, env=env, argv=shlex.split(command.replace("8000", "{port}"))) as (url, _, _):
            health, metrics = (shell(curl.replace("http://127.0.0.1:8000", url), env=env) for curl in curls)
        assert "agent_sandbox_warm_pool_size 2.0" in metrics.stdout, metrics.stdout[:500]
        if env is venv:
            answer = json.loads(health.stdout)
            assert answer.keys() == shown_health.keys(), answer
            assert answer["images"] == shown_health["images"]
            assert answer["pool"]["size"] == shown_health["pool"]["size"]


def test_the_python_example_runs() -> None:
    ((_, code),) = blocks("python")
    done = shell(f"python3 - <<'EOF'\n{code}EOF")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0 42\n"


def transcripts() -> dict[str, list[list[str]]]:
    """Each `$ command` of the console blocks, with the lines each page that shows it shows it
    printing."""
    shown: dict[str, list[list[str]]] = {}
    for _, body in blocks("console"):
        for line in body.splitlines():
            if line.startswith("$ "):
                printing: list[str] = []
                shown.setdefault(line.removeprefix("$ "), []).append(printing)
            elif line:
                printing.append(line)
    return shown


def normalised(line: str) -> str:
    """Without what changes from run to run: durations, versions, dates, sizes."""
    line = re.sub(r"\d+\.\d+ s\b", "N s", line)
    line = re.sub(r"\d+ MiB peak memory", "N MiB peak memory", line)
    line = re.sub(r"^(python state: .*), \d+ bytes$", r"\1, N bytes", line, flags=re.M)
    line = re.sub(r"Docker \S+ at", "Docker V at", line)
    line = re.sub(r"runc \S+ \(images", "runc V (images", line)
    return re.sub(r"\(\d+ MB, built [^)]*\)", "(N MB, built T)", line)


@pytest.mark.parametrize("command", [command for command, where in EXERCISED.items() if where == TRANSCRIPT])
def test_the_command_prints_what_the_page_shows(command: str, tmp_path: Path, engine: DockerEngine) -> None:
    if "configs/strict.toml" in command:
        skip_unless_offered(engine, GVISOR, command)
    # A scratch folder with the examples and the venv, so files the command saves land there.
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    done = shell(command, cwd=tmp_path)
    # The OCI backend's first run of a new image exports it, once, and says so: not shown.
    lines = (done.stdout + done.stderr).splitlines()
    printed = [normalised(line) for line in lines if line and "(once per image)" not in line]
    for transcript in transcripts()[command]:
        shown = [normalised(line) for line in transcript]
        assert len(printed) == len(shown), printed
        for line, expected in zip(printed, shown, strict=True):
            if expected.endswith(" ..."):  # the page cuts a long note short
                assert line.startswith(expected.removesuffix(" ...")), line
            elif command.endswith("doctor") and expected.startswith("ok    runtime"):
                # The runtime used is as shown; the runtimes the engine offers differ by machine.
                assert line.startswith(expected.partition("offered: ")[0] + "offered: "), line
            else:
                assert line == expected


def test_the_client_configs_start_the_server_the_pages_start() -> None:
    desktop = json.loads((AGENTS / "claude_desktop_config.json").read_text())["mcpServers"]["agent-sandbox"]
    (shown,) = [json.loads(body) for _, body in blocks("json") if body.startswith('{\n  "mcpServers"')]
    assert shown["mcpServers"]["agent-sandbox"] == desktop
    claude_code = next(command for command in shown_commands() if command.startswith("claude mcp add"))
    assert shlex.split(claude_code.partition(" -- ")[2]) == [desktop["command"], *desktop["args"]]

    docker_run = next(command for command in shown_commands() if command.startswith("docker run"))
    argv = shlex.split(docker_run.replace('"$(stat -c %g /var/run/docker.sock)"', "DOCKER_SOCKET_GID"))
    in_docker = json.loads((AGENTS / "claude_desktop_docker.json").read_text())["mcpServers"]["agent-sandbox"]
    assert argv == [in_docker["command"], *in_docker["args"]]


async def test_the_example_calls_return_what_the_pages_show(tmp_path: Path) -> None:
    """Each `{"name": ..., "arguments": ...}` call in a page, made over stdio, gives the text
    content shown in the next `text` block (durations aside). Calls in a workspace run in one
    made for the test, in order; where the page says the server was started again, so is it."""
    call = re.compile(r'```json\n(\{"name": .*?)\n```\n(.*?)```text\n(.*?)```', re.S)
    examples = [(text, example) for text in PAGES.values() for example in call.finditer(text)]
    assert len(examples) == 5
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "agent_sandbox", "serve"],
        cwd=str(ROOT),
        env={**os.environ, "AGENT_SANDBOX_WORKSPACES__DIR": str(tmp_path)},
    )
    host = Implementation(name="readme", version="1")  # a stdio workspace belongs to the host application
    workspace = None
    previous_end = 0
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(Client(server, mode="legacy", client_info=host))
        for text, example in examples:
            if example.start() < previous_end:  # the first call on the next page
                previous_end = 0
            if "started again" in text[previous_end : example.start()]:
                await stack.aclose()
                client = await stack.enter_async_context(Client(server, mode="legacy", client_info=host))
            previous_end = example.end()
            request = json.loads(example[1])
            arguments = request["arguments"]
            if "workspace" in arguments:
                if workspace is None:
                    created = await client.call_tool("workspace_create", {})
                    workspace = (created.structured_content or {})["workspace"]
                shown = example[3].replace(arguments["workspace"], workspace)
                arguments = {**arguments, "workspace": workspace}
            else:
                shown = example[3]
            result = await client.call_tool(request["name"], arguments)
            text = result.content[0].text  # type: ignore[union-attr]
            assert normalised(text).splitlines() == [normalised(line) for line in shown.splitlines()]
