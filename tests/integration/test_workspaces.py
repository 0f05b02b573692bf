"""Workspaces on the real engine: /work kept between runs through snapshots on disk, never a
container; hostile snapshots refused without unpacking; restarts, TTL and concurrency."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import anyio
import pytest

from agent_sandbox.admission import Caller
from agent_sandbox.config import EngineSettings, LimitSettings, PackageSettings, Settings, WorkspaceSettings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.models import ProjectFile, RunRequest
from agent_sandbox.sandbox import RequestError, Sandbox
from agent_sandbox.workspaces import WorkspaceError
from tests.helpers import cold_sandbox

pytestmark = pytest.mark.anyio

ME = "client-a"
AS_ME = Caller(ME)


def make(engine: DockerEngine, folder: Path, **workspaces: object) -> Sandbox:
    return cold_sandbox(engine, workspaces=WorkspaceSettings(dir=str(folder), **workspaces))  # type: ignore[arg-type]


@pytest.fixture
def sandbox(engine: DockerEngine, tmp_path: Path) -> Sandbox:
    return make(engine, tmp_path / "workspaces")


def call(workspace: str, code: str, *extra: ProjectFile, **fields: object) -> RunRequest:
    files = [ProjectFile(path="main.py", content=code), *extra]
    return RunRequest(files=files, workspace=workspace, **fields)  # type: ignore[arg-type]


async def test_write_import_modify_then_delete(sandbox: Sandbox) -> None:
    workspace = sandbox.workspaces.create(ME).id
    first = await sandbox.run(call(workspace, "open('helper.py', 'w').write('VALUE = 1\\n')"), caller=AS_ME)
    assert first.workspace is not None
    assert first.workspace.saved
    second = await sandbox.run(call(workspace, "import helper\nprint(helper.VALUE)"), caller=AS_ME)
    assert second.stdout == "1\n"
    third = await sandbox.run(
        call(workspace, "open('helper.py', 'a').write('VALUE += 1\\n')\nimport helper\nprint(helper.VALUE)"),
        caller=AS_ME,
    )
    assert third.stdout == "2\n"
    assert sandbox.workspaces.read(workspace, ME, "helper.py") == b"VALUE = 1\nVALUE += 1\n"
    assert third.artifacts[0].path == "helper.py"  # changed in this run, so it comes back too
    sandbox.workspaces.delete(workspace, ME)
    with pytest.raises(RequestError, match=f"there is no workspace '{workspace}' for this client"):
        await sandbox.run(call(workspace, "print(1)"), caller=AS_ME)


async def test_the_callers_files_win_over_the_workspaces(sandbox: Sandbox) -> None:
    workspace = sandbox.workspaces.create(ME).id
    await sandbox.run(call(workspace, "open('data.txt', 'w').write('old')"), caller=AS_ME)
    result = await sandbox.run(
        call(workspace, "print(open('data.txt').read())", ProjectFile(path="data.txt", content="new")),
        caller=AS_ME,
    )
    assert result.stdout == "new\n"


async def test_a_run_stopped_for_time_still_saves_what_it_wrote(sandbox: Sandbox) -> None:
    workspace = sandbox.workspaces.create(ME).id
    code = "open('progress.txt', 'w').write('half done')\nimport time\ntime.sleep(60)"
    result = await sandbox.run(call(workspace, code, limits={"timeout_s": 1}), caller=AS_ME)
    assert result.timed_out
    assert result.workspace is not None
    assert result.workspace.saved
    after = await sandbox.run(call(workspace, "print(open('progress.txt').read())"), caller=AS_ME)
    assert after.stdout == "half done\n"


async def test_a_run_killed_for_memory_still_saves_what_it_wrote(
    engine: DockerEngine, tmp_path: Path
) -> None:
    settings = Settings(
        engine=EngineSettings(pool_size=0),
        limits=LimitSettings(memory_mib=64),
        workspaces=WorkspaceSettings(dir=str(tmp_path)),
    )
    sandbox = Sandbox(settings, engine)
    workspace = sandbox.workspaces.create(ME).id
    code = "open('before.txt', 'w').write('kept')\nhog = bytearray(200 * 1024 * 1024)"
    result = await sandbox.run(call(workspace, code), caller=AS_ME)
    assert result.oom_killed
    assert result.workspace is not None
    assert result.workspace.saved
    assert sandbox.workspaces.read(workspace, ME, "before.txt") == b"kept"


async def test_a_second_run_on_a_busy_workspace_is_refused_clearly(sandbox: Sandbox) -> None:
    workspace = sandbox.workspaces.create(ME).id
    outcomes: dict[str, object] = {}

    async def slow() -> None:
        outcomes["slow"] = await sandbox.run(call(workspace, "import time; time.sleep(3)"), caller=AS_ME)

    async with anyio.create_task_group() as group:
        group.start_soon(slow)
        await anyio.sleep(1)
        with pytest.raises(RequestError, match="is in use by another run; wait for that run to finish"):
            await sandbox.run(call(workspace, "print(1)"), caller=AS_ME)
    again = await sandbox.run(call(workspace, "print('after')"), caller=AS_ME)
    assert again.stdout == "after\n"


async def test_workspaces_survive_a_restart_and_the_ttl_drops_idle_ones(
    engine: DockerEngine, tmp_path: Path
) -> None:
    first = make(engine, tmp_path)
    workspace = first.workspaces.create(ME).id
    await first.run(call(workspace, "open('kept.txt', 'w').write('yes')"), caller=AS_ME)
    restarted = make(engine, tmp_path)  # a new server on the same folder
    result = await restarted.run(call(workspace, "print(open('kept.txt').read())"), caller=AS_ME)
    assert result.stdout == "yes\n"
    short_lived = make(engine, tmp_path, idle_ttl_s=1)
    time.sleep(1.5)
    with pytest.raises(RequestError, match="dropped after 1 s unused"):
        await short_lived.run(call(workspace, "print(1)"), caller=AS_ME)
    assert list(tmp_path.iterdir()) == []


async def test_another_client_cannot_use_a_workspace_unless_shared(
    engine: DockerEngine, tmp_path: Path
) -> None:
    sandbox = make(engine, tmp_path)
    workspace = sandbox.workspaces.create(ME).id
    with pytest.raises(RequestError, match="belongs to another client"):
        await sandbox.run(call(workspace, "print(1)"), caller=Caller("client-b"))
    shared = make(engine, tmp_path, shared=True)
    result = await shared.run(call(workspace, "print('shared')"), caller=Caller("client-b"))
    assert result.stdout == "shared\n"


async def test_a_work_tree_over_the_cap_is_not_saved_and_the_old_state_kept(
    engine: DockerEngine, tmp_path: Path
) -> None:
    sandbox = make(engine, tmp_path, max_kib=64)
    workspace = sandbox.workspaces.create(ME).id
    await sandbox.run(call(workspace, "open('small.txt', 'w').write('v1')"), caller=AS_ME)
    result = await sandbox.run(call(workspace, "open('big.bin', 'wb').write(b'x' * 100_000)"), caller=AS_ME)
    assert result.workspace is not None
    assert not result.workspace.saved
    assert "over the workspace's" in (result.workspace.note or "")
    assert any("not saved, the previous state is kept" in note for note in result.notes)
    assert sorted(sandbox.workspaces.describe(workspace, ME).files) == ["main.py", "small.txt"]


def hostile_tar(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        tar.addfile(member, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def member(name: str, kind: bytes, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize(
    ("snapshot", "why"),
    [
        (
            hostile_tar(member("link", tarfile.SYMTYPE, linkname="/etc/passwd")),
            "'link' is not a regular file",
        ),
        (hostile_tar(member("hard", tarfile.LNKTYPE, linkname="fine.txt")), "'hard' is not a regular file"),
        (hostile_tar(member("dev", tarfile.CHRTYPE, devmajor=1, devminor=3)), "'dev' is not a regular file"),
        (hostile_tar(member("fifo", tarfile.FIFOTYPE)), "'fifo' is not a regular file"),
        (hostile_tar(member("../escape.txt", tarfile.REGTYPE, size=1), b"x"), "'..'"),
        (hostile_tar(member("/etc/cron.d/x", tarfile.REGTYPE, size=1), b"x"), "absolute"),
        (b"this is not a tar archive" * 100, "cannot be read"),
    ],
)
async def test_a_hostile_or_corrupt_snapshot_is_refused_and_never_unpacked(
    sandbox: Sandbox, tmp_path: Path, snapshot: bytes, why: str
) -> None:
    workspace = sandbox.workspaces.create(ME).id
    folder = sandbox.workspaces.root / workspace
    (folder / "snapshot.tar").write_bytes(snapshot)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(RequestError, match=f"the snapshot of workspace '{workspace}' was refused") as refused:
        await sandbox.run(call(workspace, "print(1)"), caller=AS_ME)
    assert why in str(refused.value)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written on the host
    assert not (tmp_path / "escape.txt").exists()


async def test_an_oversized_snapshot_is_refused_before_it_is_read(
    engine: DockerEngine, tmp_path: Path
) -> None:
    sandbox = make(engine, tmp_path, max_kib=1)
    workspace = sandbox.workspaces.create(ME).id
    (sandbox.workspaces.root / workspace / "snapshot.tar").write_bytes(b"\0" * (3 * 1024 * 1024))
    with pytest.raises(RequestError, match="over the 1 KiB cap"):
        await sandbox.run(call(workspace, "print(1)"), caller=AS_ME)


async def test_the_number_of_workspaces_is_capped(engine: DockerEngine, tmp_path: Path) -> None:

    sandbox = make(engine, tmp_path, max_per_client=2, max_count=3)
    sandbox.workspaces.create(ME)
    sandbox.workspaces.create(ME)
    with pytest.raises(WorkspaceError, match="this client already has 2 workspaces"):
        sandbox.workspaces.create(ME)
    sandbox.workspaces.create("client-b")
    with pytest.raises(WorkspaceError, match="already keeps 3 workspaces"):
        sandbox.workspaces.create("client-c")


async def test_a_work_tree_with_a_file_no_later_run_could_be_given_is_not_saved(sandbox: Sandbox) -> None:
    """Saved whole or not at all: saving without the file would lose it without a word."""
    workspace = sandbox.workspaces.create(ME).id
    await sandbox.run(call(workspace, "open('ok.txt', 'w').write('1')"), caller=AS_ME)
    code = "open('ok.txt', 'w').write('2')\nopen('tab\\there', 'w').write('3')"
    result = await sandbox.run(call(workspace, code), caller=AS_ME)
    assert result.workspace is not None
    assert not result.workspace.saved
    note = result.workspace.note or ""
    assert "not saved, the previous state is kept" in note
    assert "'tab\\x09here': the path contains the control character '\\t'" in note
    assert sandbox.workspaces.read(workspace, ME, "ok.txt") == b"1"


async def test_folders_and_files_the_program_locked_are_kept(sandbox: Sandbox) -> None:
    workspace = sandbox.workspaces.create(ME).id
    code = "import os\nos.makedirs('sub')\nopen('sub/data.txt', 'w').write('precious')"
    await sandbox.run(call(workspace, code), caller=AS_ME)
    locked = await sandbox.run(call(workspace, "import os\nos.chmod('sub', 0o444)"), caller=AS_ME)
    assert locked.workspace is not None
    assert locked.workspace.saved, locked.workspace.note
    assert sandbox.workspaces.read(workspace, ME, "sub/data.txt") == b"precious"
    shut = await sandbox.run(call(workspace, "import os\nos.chmod('/work', 0)"), caller=AS_ME)
    assert shut.workspace is not None
    assert shut.workspace.saved, shut.workspace.note
    assert sorted(sandbox.workspaces.describe(workspace, ME).files) == ["main.py", "sub/data.txt"]


async def test_a_file_deeper_than_path_max_keeps_the_previous_state_saying_why(sandbox: Sandbox) -> None:
    workspace = sandbox.workspaces.create(ME).id
    await sandbox.run(call(workspace, "open('before.txt', 'w').write('kept')"), caller=AS_ME)
    code = (
        "import os\nfor _ in range(300):\n    os.mkdir('d' * 15)\n    os.chdir('d' * 15)\n"
        "open('buried.txt', 'w').write('deep')"
    )
    result = await sandbox.run(call(workspace, code), caller=AS_ME)
    assert result.workspace is not None
    assert not result.workspace.saved
    assert "not looked into" in (result.workspace.note or "")
    assert "saving without them would lose them" in (result.workspace.note or "")
    assert sorted(sandbox.workspaces.describe(workspace, ME).files) == ["before.txt", "main.py"]


async def test_names_that_are_not_utf8_stay_two_files_across_runs(sandbox: Sandbox) -> None:
    workspace = sandbox.workspaces.create(ME).id
    code = "open(b'a\\xff.txt', 'w').write('ff')\nopen(b'a\\xfe.txt', 'w').write('fe')"
    first = await sandbox.run(call(workspace, code), caller=AS_ME)
    assert first.workspace is not None
    assert first.workspace.saved
    assert sorted(a.path for a in first.artifacts) == ["a\\xfe.txt", "a\\xff.txt"]
    listing = (
        "print(sorted((name, open(name, 'rb').read()) for name in os.listdir(b'.') if name.startswith(b'a')))"
    )
    second = await sandbox.run(call(workspace, "import os\n" + listing), caller=AS_ME)
    assert second.stdout == "[(b'a\\xfe.txt', b'fe'), (b'a\\xff.txt', b'ff')]\n"


async def test_a_requirements_file_the_program_left_never_drives_later_runs(
    engine: DockerEngine, tmp_path: Path
) -> None:
    """Only a caller's own requirements count: a stored requirements.txt (even one no server
    would accept) is just a file, on a server with packages off too."""
    settings = Settings(
        engine=EngineSettings(pool_size=0),
        packages=PackageSettings(enabled=False),
        workspaces=WorkspaceSettings(dir=str(tmp_path)),
    )
    sandbox = Sandbox(settings, engine)
    workspace = sandbox.workspaces.create(ME).id
    await sandbox.run(
        call(workspace, "open('requirements.txt', 'w').write('six==1.16.0\\n-e .\\n')"), caller=AS_ME
    )
    for request in (
        call(workspace, "print(open('requirements.txt').read().split()[0])", notebook=True),
        RunRequest(
            files=[ProjectFile(path="run.py", content="print('project')")],
            entrypoint="run.py",
            workspace=workspace,
        ),
    ):
        result = await sandbox.run(request, caller=AS_ME)
        assert result.exit_code == 0, result.stderr
        assert result.install is None
    with pytest.raises(RequestError, match="turned off"):  # the caller's own file still counts
        await sandbox.run(
            call(workspace, "print(1)", ProjectFile(path="requirements.txt", content="six")), caller=AS_ME
        )


async def test_a_module_named_like_the_runners_own_imports_does_not_break_run_python(
    sandbox: Sandbox,
) -> None:
    """The notebook runner's imports cannot be hijacked: a snippet runs as python3 main.py would."""
    workspace = sandbox.workspaces.create(ME).id
    modules = [
        ProjectFile(path=f"{name}.py", content="Point = tuple\n")
        for name in ("types", "traceback", "signal", "linecache")
    ]
    await sandbox.run(call(workspace, "print('stored')", *modules), caller=AS_ME)
    cell = call(
        workspace,
        "import types\nprint(types.Point)\ndef f():\n    1 / 0\nf()",
        notebook=True,
        return_last_expression=True,
    )
    result = await sandbox.run(cell, caller=AS_ME)
    assert result.stdout == "<class 'tuple'>\n"  # the program's own types.py, as python3 would
    assert result.error is not None
    assert (result.error.type, result.error.line, result.error.function) == ("ZeroDivisionError", 4, "f")
    assert result.stderr.startswith('Traceback (most recent call last):\n  File "/work/main.py", line 5')
