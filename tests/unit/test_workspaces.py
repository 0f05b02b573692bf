"""The workspace store and the sandbox's workspace helpers, on a temporary folder (no engine)."""

from __future__ import annotations

import io
import os
import tarfile
import unicodedata
from pathlib import Path

import pytest

from agent_sandbox.config import FileSettings, Settings, WorkspaceSettings
from agent_sandbox.engine.spec import FileEntry, FilesOut, OmittedFile, Outcome
from agent_sandbox.sandbox import RequestError, Sandbox, _unsaveable
from agent_sandbox.workspaces import SavedState, WorkspaceError, WorkspaceStore

ME = "me"


@pytest.fixture
def store(tmp_path: Path) -> WorkspaceStore:
    return WorkspaceStore(WorkspaceSettings(dir=str(tmp_path)), max_members=50)


def test_a_saved_state_reads_back_exactly(store: WorkspaceStore) -> None:
    workspace = store.create(ME).id
    store.save(workspace, ME, {"a.py": b"print(1)\n", "data/b.bin": bytes(range(256))}, FileSettings())
    assert store.files(workspace, ME) == {"a.py": b"print(1)\n", "data/b.bin": bytes(range(256))}
    assert store.describe(workspace, ME).files == {"a.py": 9, "data/b.bin": 256}


@pytest.mark.parametrize(
    ("contents", "why"),
    [
        ({"big.bin": b"x" * 2048}, "over the 1 KiB per-file limit"),
        (
            {unicodedata.normalize("NFC", "café.txt"): b"1", unicodedata.normalize("NFD", "café.txt"): b"2"},
            "after Unicode normalisation",
        ),
        ({f"f{i}.txt": b"" for i in range(4)}, "at most 3 are allowed"),
    ],
)
def test_a_state_no_run_could_start_from_is_not_saved(
    store: WorkspaceStore, contents: dict[str, bytes], why: str
) -> None:
    workspace = store.create(ME).id
    store.save(workspace, ME, {"kept.txt": b"old"}, FileSettings())
    limits = FileSettings(max_file_kib=1, max_files=3)
    with pytest.raises(WorkspaceError, match="a later run could not start from it") as refused:
        store.save(workspace, ME, contents, limits)
    assert why in str(refused.value)
    assert store.files(workspace, ME) == {"kept.txt": b"old"}  # the previous state stays


def test_a_snapshot_with_too_many_entries_is_refused(store: WorkspaceStore) -> None:
    workspace = store.create(ME).id
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(60):
            tar.addfile(tarfile.TarInfo(f"e{i}"))
    (store.root / workspace / "snapshot.tar").write_bytes(buffer.getvalue())
    with pytest.raises(WorkspaceError, match="more than 50 entries"):
        store.files(workspace, ME)


def test_names_that_are_not_utf8_are_kept_apart_and_read_back_exactly(store: WorkspaceStore) -> None:
    workspace = store.create(ME).id
    contents = {
        os.fsdecode(b"a\xff.txt"): b"ff",
        os.fsdecode(b"a\xfe.txt"): b"fe",
        "caf\u00e9/x.txt": b"utf-8",
    }
    store.save(workspace, ME, contents, FileSettings())
    assert store.files(workspace, ME) == contents


@pytest.mark.parametrize(
    ("name", "why"),
    [("back\\slash", "backslash"), ("line\nbreak", "control character"), ("x" * 300, "longer than 255")],
)
def test_a_name_a_later_run_could_not_be_given_keeps_the_previous_state(
    store: WorkspaceStore, name: str, why: str
) -> None:
    workspace = store.create(ME).id
    store.save(workspace, ME, {"kept.txt": b"old"}, FileSettings())
    with pytest.raises(WorkspaceError, match="a later run could not start from it") as refused:
        store.save(workspace, ME, {"new.txt": b"1", name: b"2"}, FileSettings())
    assert why in str(refused.value)
    assert store.files(workspace, ME) == {"kept.txt": b"old"}


def _outcome(snapshot: FilesOut | None, **facts: bool) -> Outcome:
    return Outcome(
        exit_code=0, stdout=b"", stderr=b"", stdout_bytes=0, stderr_bytes=0, stdout_truncated=False,
        stderr_truncated=False, duration_s=0.1, timed_out=False, oom_killed=facts.get("oom", False),
        output_killed=facts.get("output", False), snapshot=snapshot,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("snapshot", "facts", "why"),
    [
        (None, {"oom": True}, "ran out of memory before it could hand back /work"),
        (None, {"output": True}, "stopped for its output"),
        (None, {}, "its launcher was killed, or the engine stopped it"),
        (
            FilesOut([FileEntry("a.txt", 1)], [OmittedFile("locked/b\udcff", 3, "the sandbox user cannot read it: Permission denied", "unreadable")], 2, b"a"),
            {},
            "'locked/b\\xff': the sandbox user cannot read it",
        ),
        (
            FilesOut([], [OmittedFile("deep", 0, "a folder whose path is over 2048 bytes: not looked into", "unreachable")], 1, b""),
            {},
            "saving without them would lose them",
        ),
    ],
)  # fmt: skip
def test_a_work_tree_that_did_not_come_back_whole_is_not_saved(
    snapshot: FilesOut | None, facts: dict[str, bool], why: str
) -> None:
    reason = _unsaveable(_outcome(snapshot, **facts))
    assert reason is not None
    assert why in reason


def test_a_work_tree_that_came_back_whole_is_saved() -> None:
    snapshot = FilesOut([FileEntry("a.txt", 1)], [], 1, b"a")
    assert _unsaveable(_outcome(snapshot)) is None


def test_the_callers_files_win_whatever_their_unicode_form() -> None:
    stored = {unicodedata.normalize("NFD", "café.txt"): b"stored", "other.txt": b"kept"}
    merged = Sandbox(Settings())._on_top_of(
        "w", stored, [(unicodedata.normalize("NFC", "café.txt"), b"mine")]
    )
    assert sorted(path for path, _ in merged) == sorted(
        ["other.txt", unicodedata.normalize("NFC", "café.txt")]
    )
    assert [data for path, data in merged if path.startswith("caf")] == [b"mine"]


def test_a_full_workspace_is_refused_saying_what_it_holds_and_how_to_make_room() -> None:
    sandbox = Sandbox(Settings(files=FileSettings(max_files=3)))
    stored = {"a.txt": b"", "b.txt": b"", "main.py": b""}
    assert len(sandbox._on_top_of("w", stored, [("main.py", b"import os")])) == 3  # replaces: fits
    with pytest.raises(RequestError) as refused:
        sandbox._on_top_of("w", stored, [("x.py", b""), ("y.py", b"")])
    message = str(refused.value)
    assert "workspace w holds 3 files and this call adds 2 ('x.py', 'y.py')" in message
    assert "at most 3 files" in message
    assert "sent under the name of a file the workspace already holds" in message


def test_a_workspace_too_large_with_the_call_is_refused_saying_so() -> None:
    sandbox = Sandbox(Settings(files=FileSettings(max_total_kib=2, max_file_kib=2)))
    stored = {"data.bin": b"x" * 1500}
    with pytest.raises(RequestError, match="workspace w holds 1 KiB besides the files this call sends"):
        sandbox._on_top_of("w", stored, [("main.py", b"y" * 1000)])


def test_ids_cannot_name_a_path(store: WorkspaceStore, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    for bad in ("../outside", "..", "/etc", "x" * 22 + "/.."):
        with pytest.raises(WorkspaceError, match="there is no workspace"):
            store.files(bad, ME)


def test_a_workspace_of_the_old_stdio_owner_goes_to_the_first_stdio_host_that_uses_it(
    store: WorkspaceStore,
) -> None:
    """Made before stdio clients were named by their host application: still reachable."""
    workspace = store.create("stdio").id
    assert store.describe(workspace, "stdio:claude-ai").owner == "stdio:claude-ai"
    with pytest.raises(WorkspaceError, match="belongs to another client"):
        store.describe(workspace, "stdio:visual-studio-code")
    with pytest.raises(WorkspaceError, match="belongs to another client"):
        store.describe(store.create("stdio").id, "session:abc")  # not an HTTP client's


def test_a_python_state_is_kept_as_opaque_bytes_and_cleared_by_its_owner_only(store: WorkspaceStore) -> None:
    workspace = store.create(ME).id
    assert store.state(workspace, ME) is None
    store.save_state(workspace, ME, SavedState(b"\x80\x05not unpickled here", ("df", "f"), "datascience"))
    kept = store.state(workspace, ME)
    assert kept == SavedState(b"\x80\x05not unpickled here", ("df", "f"), "datascience")
    info = store.describe(workspace, ME)
    assert (info.state_names, info.state_bytes, info.state_profile) == (("df", "f"), 20, "datascience")
    assert oct((store.root / workspace / "state.bin").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(WorkspaceError, match="there is no workspace"):
        store.reset_state(workspace, "another client")
    with store.in_use(workspace, ME), pytest.raises(WorkspaceError, match="in use by a run"):
        store.reset_state(workspace, ME)
    store.reset_state(workspace, ME)
    assert store.state(workspace, ME) is None
    assert not (store.root / workspace / "state.bin").exists()


def test_a_state_over_the_cap_on_disk_is_refused_saying_how_to_clear_it(tmp_path: Path) -> None:
    store = WorkspaceStore(WorkspaceSettings(dir=str(tmp_path), max_state_kib=1))
    workspace = store.create(ME).id
    store.save_state(workspace, ME, SavedState(b"x" * 2048, ("big",), "minimal"))
    with pytest.raises(WorkspaceError, match=r"over the 1 KiB cap\. Clear it \(workspace_reset_state\)"):
        store.state(workspace, ME)
