"""The server's own image (the Dockerfile at the repository root), built by
scripts/build-server-image.sh and run the way MCP clients run containerised servers:
`docker run -i --rm ...` over stdio, with the host's Docker socket and no network."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from importlib.metadata import requires, version
from pathlib import Path

import anyio
import docker
import docker.errors
import pytest
from mcp import Client, StdioServerParameters
from packaging.requirements import Requirement

from agent_sandbox.engine.docker import LABEL, OWNER_LABEL

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "agent-sandbox-server:test"
CLIENT_CONFIG = ROOT / "examples" / "agents" / "claude_desktop_docker.json"
SOCKET = "/var/run/docker.sock"
SERVER_USER = "10001:10001"


@pytest.fixture(scope="module")
def server_image() -> str:
    """Built by the script, as an operator would; seconds when nothing changed."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-server-image.sh"), IMAGE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == IMAGE
    return IMAGE


@pytest.fixture
def server_name(docker_client: docker.DockerClient) -> Iterator[str]:
    """A unique name, also the container's hostname, which is how its sandboxes' owner label
    starts; whatever is left under that name is removed afterwards."""
    name = f"agent-sandbox-server-test-{secrets.token_hex(4)}"
    yield name
    for container in [*owned_by(docker_client, name), *server_containers(docker_client, name)]:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_container(container, force=True)


# Plain lists (ids, no per-container inspect): other tests' containers come and go meanwhile.
def owned_by(client: docker.DockerClient, server: str) -> list[str]:
    sandboxes = client.api.containers(all=True, filters={"label": LABEL})
    return [
        c["Id"] for c in sandboxes if (c.get("Labels") or {}).get(OWNER_LABEL, "").startswith(f"{server}/")
    ]


def server_containers(client: docker.DockerClient, name: str) -> list[str]:
    return [c["Id"] for c in client.api.containers(all=True, filters={"name": f"^{name}$"})]


def client_config_args(image: str, name: str) -> list[str]:
    """The `docker` arguments of examples/agents/claude_desktop_docker.json, as Claude Desktop
    would run them, with the socket's group filled in, the image under test, and a name."""
    server = json.loads(CLIENT_CONFIG.read_text())["mcpServers"]["agent-sandbox"]
    assert server["command"] == "docker"
    gid = str(os.stat(SOCKET).st_gid)
    args = [gid if arg == "DOCKER_SOCKET_GID" else arg for arg in server["args"]]
    assert args[:3] == ["run", "-i", "--rm"]
    assert "--network none" in " ".join(args)
    assert args[-1] == "agent-sandbox-server:latest"
    return [*args[:3], "--name", name, "--hostname", name, *args[3:-1], image]


def test_the_image_runs_as_an_unprivileged_user_and_is_not_a_sandbox(
    server_image: str, docker_client: docker.DockerClient
) -> None:
    config = docker_client.images.get(server_image).attrs["Config"]
    assert config["User"] == SERVER_USER
    assert config["Entrypoint"] == ["agent-sandbox"]
    assert config["Cmd"] == ["serve"]
    assert LABEL not in (config.get("Labels") or {})  # servers reap what carries it
    assert "AGENT_SANDBOX_PACKAGES__ENABLED=false" in config["Env"]


def test_the_image_ships_the_dependency_versions_the_tests_ran_with(
    server_image: str, docker_client: docker.DockerClient
) -> None:
    runtime = [Requirement(line) for line in requires("agent-sandbox") or [] if "extra ==" not in line]
    names = [requirement.name for requirement in runtime]
    assert "mcp" in names
    script = f"from importlib.metadata import version; print(*(version(n) for n in {names!r}))"
    inside = docker_client.containers.run(
        server_image,
        ["-c", script],
        entrypoint="/opt/agent-sandbox/bin/python",
        network_disabled=True,
        remove=True,
    )
    assert inside.decode().split() == [version(name) for name in names]


async def test_an_mcp_client_runs_python_through_the_server_image(
    server_image: str, server_name: str, docker_client: docker.DockerClient
) -> None:
    params = StdioServerParameters(
        command="docker", args=client_config_args(server_image, server_name), env=dict(os.environ)
    )
    with anyio.fail_after(120):
        async with Client(params) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert {"run_python", "run_project"} <= tools

            code = "import math, os\nprint(math.factorial(20), os.getuid())\nmath.pi"
            result = await client.call_tool("run_python", {"code": code})
            assert result.is_error is False, result.content
            assert result.structured_content is not None
            assert result.structured_content["exit_code"] == 0
            assert result.structured_content["stdout"] == "2432902008176640000 1000\n"
            assert result.structured_content["return_value"] == "3.141592653589793"

            # The image's default: no per-run packages (no network, no shared wheel cache).
            refused = await client.call_tool("run_python", {"code": "", "requirements": ["six"]})
            assert refused.is_error is True
            assert "turned off" in str(refused.content)

            # Workspaces are on, kept in the image's folder (a volume, if the operator mounts one).
            created = await client.call_tool("workspace_create", {})
            assert created.structured_content is not None, created.content
            workspace = created.structured_content["workspace"]
            code = "open('note.txt', 'w').write('kept')"
            await client.call_tool("run_python", {"code": code, "workspace": workspace})
            code = "print(open('note.txt').read())"
            again = await client.call_tool("run_python", {"code": code, "workspace": workspace})
            assert again.structured_content is not None, again.content
            assert again.structured_content["stdout"] == "kept\n"

            (server_id,) = server_containers(docker_client, server_name)
            server = docker_client.containers.get(server_id)
            assert LABEL not in server.labels
            assert server.attrs["Config"]["User"] == SERVER_USER
            assert server.attrs["HostConfig"]["NetworkMode"] == "none"
            # Its sandboxes (the warm pool at least) are siblings on the host's engine, marked
            # with its hostname: so the check below that none is left means something.
            await wait_for(lambda: bool(owned_by(docker_client, server_name)), "no sandbox of the server")

    # The client closed stdin: the server removed its sandboxes and exited; --rm did the rest.
    await wait_for(lambda: not server_containers(docker_client, server_name), "the server container stayed")
    await wait_for(lambda: not owned_by(docker_client, server_name), "sandbox containers were left")


async def wait_for(condition: Callable[[], bool], failure: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, failure
        await anyio.sleep(0.2)
