"""The service on a scripted engine, in milliseconds: what it sends an engine, how it judges what
comes back, workspaces, admission and health. The same behaviour against the real engine is in
tests/integration and tests/mcp."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import anyio
import pytest

from agent_sandbox.admission import Caller
from agent_sandbox.config import EngineSettings, FileSettings, PackageSettings, Settings, WorkspaceSettings
from agent_sandbox.engine.base import EngineHealth
from agent_sandbox.engine.spec import InstallOutcome, OmittedFile, Outcome, RunSpec
from agent_sandbox.errors import Busy, EngineUnavailable, ImageMissing, PackageRefused, Refused
from agent_sandbox.models import ProjectFile, RunRequest
from agent_sandbox.packages.cache import CachedWheel
from agent_sandbox.packages.resolver import Resolution
from agent_sandbox.sandbox import Sandbox
from tests.scripted_engine import ScriptedEngine, outcome

pytestmark = pytest.mark.anyio
ME = Caller("me")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sandbox_on(engine: ScriptedEngine, tmp_path: Path, **sections: object) -> Sandbox:
    settings = Settings(
        engine=EngineSettings(pool_size=0), workspaces=WorkspaceSettings(dir=str(tmp_path)), **sections
    )  # type: ignore[arg-type]
    return Sandbox(settings, engine)


def files_in(spec: RunSpec) -> dict[str, bytes]:
    """The files a spec hands the sandbox, read back from its tar."""
    with tarfile.open(fileobj=io.BytesIO(spec.archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def call(code: str, *extra: ProjectFile, **fields: object) -> RunRequest:
    return RunRequest(files=[ProjectFile(path="main.py", content=code), *extra], **fields)  # type: ignore[arg-type]


async def test_a_run_becomes_one_spec_and_its_outcome_is_judged(tmp_path: Path) -> None:
    engine = ScriptedEngine(outcome(stdout=b"42\n", stderr=b"", exit_code=0, files={"out.csv": b"a,b\n"}))
    result = await sandbox_on(engine, tmp_path).run(
        call("print(42)", notebook=True, return_last_expression=True)
    )
    [spec] = engine.specs
    assert files_in(spec) == {"main.py": b"print(42)"}
    assert spec.results.notebook
    assert (result.exit_code, result.stdout, result.violations) == (0, "42\n", [])
    assert [(a.path, a.content) for a in result.artifacts] == [("out.csv", "a,b\n")]


async def test_a_timeout_and_a_traceback_are_judged_with_notes(tmp_path: Path) -> None:
    traceback = b'Traceback (most recent call last):\n  File "/work/main.py", line 1, in <module>\n    1/0\nZeroDivisionError: division by zero\n'
    engine = ScriptedEngine(outcome(exit_code=137, timed_out=True), outcome(stderr=traceback, exit_code=1))
    sandbox = sandbox_on(engine, tmp_path)
    slow = await sandbox.run(call("while True: pass"))
    assert [v.kind for v in slow.violations] == ["timeout"]
    failed = await sandbox.run(call("1/0"))
    assert failed.error is not None
    assert (failed.error.type, failed.error.line) == ("ZeroDivisionError", 1)
    assert "Fix that line" in failed.notes[0]


async def test_a_workspace_restores_its_files_under_the_callers_and_saves_what_came_back(
    tmp_path: Path,
) -> None:
    engine = ScriptedEngine(
        outcome(snapshot={"main.py": b"v1", "data.txt": b"kept"}),
        outcome(snapshot={"main.py": b"v2", "data.txt": b"kept", "new.txt": b"n"}),
    )
    sandbox = sandbox_on(engine, tmp_path)
    workspace = (await sandbox.create_workspace(ME.id)).id
    first = await sandbox.run(call("v1", workspace=workspace), caller=ME)
    second = await sandbox.run(call("v2", workspace=workspace), caller=ME)
    assert files_in(engine.specs[1]) == {"data.txt": b"kept", "main.py": b"v2"}  # the caller's main.py won
    assert engine.specs[1].results.snapshot_files > 0
    assert (first.workspace and first.workspace.saved, second.workspace and second.workspace.saved) == (
        True,
        True,
    )
    assert await sandbox.read_workspace_file(workspace, ME.id, "new.txt") == b"n"


async def test_a_snapshot_that_would_lose_a_file_keeps_the_previous_state(tmp_path: Path) -> None:
    lost = OmittedFile("locked.txt", 3, "the sandbox user cannot read it: Permission denied", "unreadable")
    engine = ScriptedEngine(
        outcome(snapshot={"a.txt": b"1"}), outcome(snapshot={"a.txt": b"2"}, omitted=[lost])
    )
    sandbox = sandbox_on(engine, tmp_path)
    workspace = (await sandbox.create_workspace(ME.id)).id
    await sandbox.run(call("", workspace=workspace), caller=ME)
    result = await sandbox.run(call("", workspace=workspace), caller=ME)
    assert result.workspace is not None
    assert not result.workspace.saved
    assert "'locked.txt': the sandbox user cannot read it" in (result.workspace.note or "")
    assert await sandbox.read_workspace_file(workspace, ME.id, "a.txt") == b"1"


async def test_refusals_come_before_any_engine_call(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    sandbox = sandbox_on(
        engine, tmp_path, packages=PackageSettings(enabled=False), files=FileSettings(max_files=2)
    )
    for request, error, words in (
        (call("x", entrypoint="other.py"), Refused, "entrypoint 'other.py' is not one of the files"),
        (call("x", ProjectFile(path="../up.py", content="")), Refused, "'..' segments are not allowed"),
        (call("x", requirements=["six"]), PackageRefused, "turned off"),
        (call("x", profile="datascience"), Refused, "image profile 'datascience' is not offered"),
        (
            call("x", ProjectFile(path="a", content=""), ProjectFile(path="b", content="")),
            Refused,
            "at most 2",
        ),
    ):
        with pytest.raises(error, match=words):
            await sandbox.run(request)
    assert engine.specs == []


async def test_an_engine_error_reaches_the_caller_as_it_is(tmp_path: Path) -> None:
    engine = ScriptedEngine(EngineUnavailable("no engine answers; start one"))
    with pytest.raises(EngineUnavailable, match="no engine answers"):
        await sandbox_on(engine, tmp_path).run(call("print(1)"))


async def test_runs_past_the_slots_queue_and_past_the_queue_are_busy(tmp_path: Path) -> None:
    engine = ScriptedEngine(outcome(stdout=b"done\n"))
    engine.hold = anyio.Event()
    sandbox = sandbox_on(engine, tmp_path)
    sandbox = Sandbox(
        sandbox.settings.model_copy(
            update={"engine": EngineSettings(pool_size=0, max_concurrent_runs=1, max_queued_runs=1)}
        ),
        engine,
    )
    results = []
    stages: list[str] = []

    async def run() -> None:
        async def heard(stage: str, detail: str = "") -> None:
            stages.append(f"{stage}, {detail}" if detail else stage)

        results.append(await sandbox.run(call("print(1)"), heard))

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        group.start_soon(run)
        await anyio.wait_all_tasks_blocked()
        assert (sandbox.load().running, sandbox.load().queued) == (1, 1)
        with pytest.raises(Busy, match="1 runs are in progress and 1 are waiting"):
            await sandbox.run(call("print(2)"))
        engine.hold.set()
    assert [r.stdout for r in results] == ["done\n", "done\n"]
    assert "queued, 0 ahead" in stages


async def test_start_raises_the_first_problem_the_engine_reports(tmp_path: Path) -> None:
    missing = ImageMissing("the sandbox image agent-sandbox:minimal is not there; build it")
    engine = ScriptedEngine(health=EngineHealth("the scripted engine", "1.0", problems=[missing]))
    with pytest.raises(ImageMissing, match="build it"):
        sandbox_on(engine, tmp_path).start()
    assert sandbox_on(ScriptedEngine(), tmp_path).start() == "1.0"


async def test_a_warm_pool_is_the_engines_and_counts_in_the_load(tmp_path: Path) -> None:
    settings = Settings(engine=EngineSettings(pool_size=2), workspaces=WorkspaceSettings(dir=str(tmp_path)))
    sandbox = Sandbox(settings, ScriptedEngine())
    assert sandbox.load().warm_ready == 0
    async with sandbox:
        assert (sandbox.load().warm_ready, sandbox.load().warm_size) == (2, 2)
    assert sandbox.load().warm_ready == 0


async def test_requirements_are_staged_for_the_engine_and_their_install_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = tmp_path / "six-1.17.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    cached = CachedWheel(wheel.name, "0" * 64, wheel.stat().st_size, wheel)
    installed = InstallOutcome(True, 0, 0.25, "Installed 1 package", 120.0)
    failed = InstallOutcome(True, 1, 0.1, "error: broken wheel", 120.0)
    staged: list[bool] = []

    def ran(spec: RunSpec) -> Outcome:
        assert spec.install is not None
        staged.append((Path(spec.install.mount.wheels_dir) / wheel.name).is_file())
        return outcome(stdout=b"ok\n", install=installed)

    engine = ScriptedEngine(ran, outcome(exit_code=None, install=failed))
    sandbox = sandbox_on(engine, tmp_path, packages=PackageSettings(cache_dir=str(tmp_path / "cache")))

    async def resolve(requirements: object, target: object) -> Resolution:
        return Resolution(("six",), (cached,), True, 0.0)

    monkeypatch.setattr(sandbox.wheels, "resolve", resolve)
    result = await sandbox.run(call("import six", requirements=["six"]))
    assert staged == [True]  # the wheel was there for the sandbox while it ran
    assert engine.specs[0].install is not None
    assert engine.specs[0].install.wheels == (wheel.name,)
    assert result.install is not None
    assert (result.install.ok, result.install.install_s, result.install.from_cache) == (True, 0.25, True)
    broken = await sandbox.run(call("import six", requirements=["six"]))
    assert broken.install is not None
    assert not broken.install.ok
    assert broken.exit_code is None
    assert "installer exit code 1" in broken.notes[0]


async def test_requirements_and_workspaces_are_refused_before_the_files_are_read(tmp_path: Path) -> None:
    """The order callers have always seen: the package policy, then the workspace, then the files."""
    sandbox = sandbox_on(ScriptedEngine(), tmp_path, packages=PackageSettings(deny=["six"]))
    bad_base64 = ProjectFile(path="data.bin", content="not base64!", encoding="base64")
    with pytest.raises(PackageRefused, match="six"):
        await sandbox.run(call("", bad_base64, requirements=["six"]))
    with pytest.raises(Refused, match="there is no workspace"):
        await sandbox.run(call("", bad_base64, workspace="x" * 22), caller=ME)
    with pytest.raises(Refused, match=r"files\[1\] \('data.bin'\): the content is not valid base64"):
        await sandbox.run(call("", bad_base64))
