"""The workspace store and the sandbox's workspace helpers, on a temporary folder (no engine)."""

from __future__ import annotations

import io
import tarfile
import unicodedata
from pathlib import Path

import pytest

from agent_sandbox.config import FileSettings, WorkspaceSettings
from agent_sandbox.engine.spec import FilesOut
from agent_sandbox.models import ProjectFile, RunRequest
from agent_sandbox.sandbox import _keepable, _on_top_of
from agent_sandbox.workspaces import WorkspaceError, WorkspaceStore

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


def test_names_a_caller_could_not_send_are_left_out_not_fatal() -> None:
    snapshot = FilesOut(
        files=[
            {"path": "good.txt", "size": 1},
            {"path": "bad\udcffname", "size": 1},
            {"path": "back\\slash", "size": 1},
        ],
        omitted=[],
        changed=3,
        data=b"gbs",
    )
    contents, unnamable = _keepable(snapshot)
    assert contents == {"good.txt": b"g", "bad\ufffdname": b"b"}
    assert unnamable == ["back\\slash"]


def test_the_callers_files_win_whatever_their_unicode_form() -> None:
    stored = {unicodedata.normalize("NFD", "café.txt"): b"stored", "other.txt": b"kept"}
    request = RunRequest(files=[ProjectFile(path=unicodedata.normalize("NFC", "café.txt"), content="mine")])
    merged = _on_top_of(stored, request)
    assert sorted(f.path for f in merged.files) == sorted(
        ["other.txt", unicodedata.normalize("NFC", "café.txt")]
    )
    assert [f.content for f in merged.files if f.path.startswith("caf")] == ["mine"]


def test_ids_cannot_name_a_path(store: WorkspaceStore, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    for bad in ("../outside", "..", "/etc", "x" * 22 + "/.."):
        with pytest.raises(WorkspaceError, match="there is no workspace"):
            store.files(bad, ME)
