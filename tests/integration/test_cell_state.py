"""A notebook that remembers on containers that never do: run_python cells in a workspace keep
their global names across fresh sandboxes, on the real engine and images (runc, gVisor and the
Kubernetes test cluster), and the server never unpickles a state itself. The MCP transcript
across a server restart is tests/mcp/test_workspaces.py's."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from agent_sandbox.admission import Caller
from agent_sandbox.config import EngineSettings, Settings, WorkspaceSettings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.models import ProjectFile, RunRequest, RunResult
from agent_sandbox.sandbox import RequestError, Sandbox
from tests.conftest import engine_for
from tests.helpers import PROFILES, profile_or_skip

pytestmark = pytest.mark.anyio

ME = Caller("client-a")


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest, engine: DockerEngine) -> Settings:
    return profile_or_skip(request, engine)


def stateful(request: pytest.FixtureRequest, settings: Settings, folder: Path, **workspaces: Any) -> Sandbox:
    """A sandbox of ``settings`` (cold) whose workspaces live in ``folder``."""
    engine = engine_for(request, settings)
    chosen = Settings(
        **{
            **settings.model_dump(),
            "engine": {**settings.engine.model_dump(), "pool_size": 0},
            "workspaces": WorkspaceSettings(dir=str(folder), **workspaces),
        }
    )
    return Sandbox(chosen, engine)


def on_docker(engine: DockerEngine, folder: Path, **workspaces: Any) -> Sandbox:
    """A sandbox on the default profile (cold) whose workspaces live in ``folder``."""
    settings = Settings(
        engine=EngineSettings(pool_size=0), workspaces=WorkspaceSettings(dir=str(folder), **workspaces)
    )
    return Sandbox(settings, engine)


def cell(workspace: str, code: str, **fields: Any) -> RunRequest:
    return RunRequest(
        files=[ProjectFile(path="main.py", content=code)],
        workspace=workspace,
        notebook=True,
        return_last_expression=True,
        **fields,
    )


async def run(sandbox: Sandbox, workspace: str, code: str, **fields: Any) -> RunResult:
    result = await sandbox.run(cell(workspace, code, **fields), caller=ME)
    assert result.exit_code == 0 or fields, result.stderr
    return result


DEFINE = """
import math
counter = 10
def bump():
    return counter + 1
class Point:
    def __init__(self, x):
        self.x = x
origin = Point(0)
twice = lambda v: 2 * v
squares = (n * n for n in range(3))
log = open("log.txt", "w")
"""


async def test_names_outlive_the_container_that_made_them(
    request: pytest.FixtureRequest, profile: Settings, tmp_path: Path
) -> None:
    sandbox = stateful(request, profile, tmp_path)
    workspace = sandbox.workspaces.create(ME.id).id
    first = await run(sandbox, workspace, DEFINE)
    state = first.state
    assert state is not None
    assert state.saved
    assert set(state.kept) == {"math", "counter", "bump", "Point", "origin", "twice"}
    assert [entry.name for entry in state.dropped] == ["squares", "log"]
    assert any("not kept for the next call: squares (a generator" in note for note in first.notes)
    second = await run(
        sandbox,
        workspace,
        "counter = 41\nprint(bump(), twice(origin.x + 3), isinstance(origin, Point))\nmath.pi",
    )
    assert second.stdout == "42 6 True\n"
    assert second.return_value == "3.141592653589793"
    assert second.state is not None
    assert "squares" not in second.state.kept
    # A new server process on the same folder: the names are still there.
    restarted = stateful(request, profile, tmp_path)
    third = await run(restarted, workspace, "bump()")
    assert third.return_value == "42"


async def test_a_dataframe_a_function_a_class_its_instance_and_a_lambda_across_a_restart(
    engine: DockerEngine, tmp_path: Path
) -> None:
    settings = Settings(
        engine=EngineSettings(pool_size=0, profiles=["minimal", "datascience"]),
        workspaces=WorkspaceSettings(dir=str(tmp_path)),
    )
    sandbox = Sandbox(settings, engine)
    workspace = sandbox.workspaces.create(ME.id).id
    science = {"profile": "datascience"}
    await run(
        sandbox,
        workspace,
        "import pandas as pd\ndf = pd.DataFrame({'x': [1, 2, 3]})\ndef total(frame): return int(frame.x.sum())\n"
        "class Scale:\n    def __init__(self, k): self.k = k\nthree = Scale(3)\nsquare = lambda v: v * v\n",
        **science,
    )
    second = await run(
        sandbox,
        workspace,
        "print(total(df) * three.k, square(4), isinstance(three, Scale))\ndf.shape",
        **science,
    )
    assert second.stdout == "18 16 True\n"
    assert second.return_value == "(3, 1)"
    # Under a profile without pandas: what needs it is named, the rest restored, nothing lost.
    minimal = await run(sandbox, workspace, "print(square(5), three.k)")
    assert minimal.stdout == "25 3\n"
    assert minimal.state is not None
    unrestored = {entry.name: entry.why for entry in minimal.state.not_restored}
    assert set(unrestored) == {"pd", "df"}
    assert unrestored["pd"] == "needs the module 'pandas', which this image does not have"
    assert any("image='datascience' to get them back" in note for note in minimal.notes)
    back = await run(sandbox, workspace, "total(df)", **science)
    assert back.return_value == "6"
    # A new server process on the same folder: all of them are still there.
    restarted = Sandbox(settings, engine)
    third = await run(
        restarted,
        workspace,
        "print(total(df), square(three.k), isinstance(three, Scale))\ndf.x.tolist()",
        **science,
    )
    assert third.stdout == "6 9 True\n"
    assert third.return_value == "[1, 2, 3]"


async def test_a_crafted_state_runs_only_inside_the_sandbox(engine: DockerEngine, tmp_path: Path) -> None:
    """A state is written by sandboxed code; one crafted to run code when unpickled (here: make
    a file) must run it in a sandbox only, never in the server process or on the host."""
    marker = tmp_path / "unpickled" / "here"

    class Crafted:
        def __reduce__(self) -> tuple[Any, ...]:
            code = (
                f"import os; os.makedirs({str(marker.parent)!r}, exist_ok=True); open({str(marker)!r}, 'w')"
            )
            return (exec, (code,))

    sandbox = on_docker(engine, tmp_path / "ws")
    workspace = sandbox.workspaces.create(ME.id).id
    folder = tmp_path / "ws" / workspace
    (folder / "state.bin").write_bytes(pickle.dumps(Crafted()))
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(
        json.dumps({**meta, "state": {"names": ["x"], "bytes": 1, "profile": "minimal"}})
    )
    # Everything the server does with a workspace: list it, read its state, run a cell in it.
    info = await sandbox.describe_workspace(workspace, ME.id)
    assert info.state_names == ("x",)
    result = await run(sandbox, workspace, f"import os\nos.path.exists({str(marker)!r})")
    assert result.return_value == "True"  # it ran: in the sandbox, whose /tmp is its own
    assert not marker.exists()
    assert not marker.parent.exists()
    assert result.state is not None
    assert result.state.not_restored[0].why.startswith("the saved state cannot be read")


async def test_a_state_over_the_cap_drops_the_big_names_and_keeps_the_files(
    engine: DockerEngine, tmp_path: Path
) -> None:
    sandbox = on_docker(engine, tmp_path, max_state_kib=64)
    workspace = sandbox.workspaces.create(ME.id).id
    result = await run(
        sandbox, workspace, "blob = b'x' * 200_000\nsmall = 1\nopen('kept.txt', 'w').write('yes')"
    )
    assert result.state is not None
    assert result.state.kept == ["small"]
    assert result.state.dropped[0].name == "blob"
    assert "too big to keep" in result.state.dropped[0].why
    assert sandbox.workspaces.read(workspace, ME.id, "kept.txt") == b"yes"
    again = await run(sandbox, workspace, "print(small, 'blob' in globals())")
    assert again.stdout == "1 False\n"


async def test_a_cell_stopped_for_time_keeps_the_names_of_before(
    engine: DockerEngine, tmp_path: Path
) -> None:
    sandbox = on_docker(engine, tmp_path)
    workspace = sandbox.workspaces.create(ME.id).id
    await run(sandbox, workspace, "value = 'before'")
    stopped = await run(sandbox, workspace, "value = 'during'\nwhile True: pass", limits={"timeout_s": 1.0})
    assert stopped.timed_out
    assert stopped.state is not None
    assert not stopped.state.saved
    assert stopped.state.kept == ["value"]
    assert any("the next call starts with the names of before this call" in note for note in stopped.notes)
    after = await run(sandbox, workspace, "value")
    assert after.return_value == "'before'"


async def test_keep_state_off_a_reset_and_run_project(engine: DockerEngine, tmp_path: Path) -> None:
    sandbox = on_docker(engine, tmp_path)
    workspace = sandbox.workspaces.create(ME.id).id
    await run(sandbox, workspace, "kept = 1")
    off = await run(sandbox, workspace, "print('kept' in globals())\nnot_kept = 2", keep_state=False)
    assert off.stdout == "False\n"
    assert off.state is None
    on = await run(sandbox, workspace, "print(kept, 'not_kept' in globals())")
    assert on.stdout == "1 False\n"
    await sandbox.reset_workspace_state(workspace, ME.id)
    assert (await sandbox.describe_workspace(workspace, ME.id)).state_profile is None
    reset = await run(sandbox, workspace, "print('kept' in globals())")
    assert reset.stdout == "False\n"
    project = RunRequest(
        files=[ProjectFile(path="main.py", content="x = 1")], workspace=workspace, keep_state=True
    )
    with pytest.raises(RequestError, match="keep_state is for run_python cells in a workspace"):
        await sandbox.run(project, caller=ME)


async def test_the_state_is_kept_off_when_its_cap_is_zero(engine: DockerEngine, tmp_path: Path) -> None:
    sandbox = on_docker(engine, tmp_path, max_state_kib=0)
    workspace = sandbox.workspaces.create(ME.id).id
    first = await run(sandbox, workspace, "x = 1")
    assert first.state is None
    second = await run(sandbox, workspace, "print('x' in globals())")
    assert second.stdout == "False\n"
