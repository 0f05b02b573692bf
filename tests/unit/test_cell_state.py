"""What the server makes of a cell's state block: the sandbox's report read as untrusted JSON,
the bytes kept opaque, and the notes a model reads."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from agent_sandbox.cell_state import read_cell_state, state_notes
from agent_sandbox.engine.spec import FileEntry, FilesOut
from agent_sandbox.models import NameNote, StateReport
from agent_sandbox.workspaces import SavedState

BEFORE = SavedState(b"old state", ("df", "model"), "datascience")


def block(report: bytes, state: bytes = b"opaque") -> FilesOut:
    files = [FileEntry("report", len(report)), FileEntry("state", len(state))]
    return FilesOut(files, [], 2, report + state)


def test_a_good_block_keeps_the_bytes_as_they_came_and_lists_the_names() -> None:
    line = {"kept": ["a", "f"], "dropped": [["gen", "a generator"]], "not_restored": [], "bytes": 9}
    cell = read_cell_state(block(json.dumps(line).encode(), b"\x80\x05crafted"), BEFORE)
    assert cell.data == b"\x80\x05crafted"
    assert cell.report.saved
    assert cell.report.kept == ["a", "f"]
    assert cell.report.dropped == [NameNote(name="gen", why="a generator")]
    assert cell.report.bytes == len(b"\x80\x05crafted")


def test_without_a_usable_block_the_workspace_keeps_the_names_it_had() -> None:
    refused = FilesOut([], [], 0, b"", "the cell ended without saving it (os._exit, a crash or a kill)")
    for given, why in [
        (None, "the sandbox ended before it could send it"),
        (refused, "os._exit"),
        (block(b"{not json"), "could not be read"),
        (block(b'{"kept": "not a list"}'), "could not be read"),
        (block(b'{"error": "MemoryError: "}'), "saving it failed in the sandbox (MemoryError: )"),
        (block(b'{"kept": ["a"], "bytes": 7}', b"cut"), "it came back cut short (3 of 7 bytes)"),
        (block(b'{"kept": ["a"], "bytes": 3}' + b" " * 70_000, b"abc"), "could not be read"),
    ]:
        cell = read_cell_state(given, BEFORE)
        assert cell.data is None
        assert not cell.report.saved
        assert cell.report.kept == ["df", "model"]
        assert cell.report.note is not None
        assert why in cell.report.note


def test_names_and_reasons_from_the_sandbox_are_capped() -> None:
    line = {"kept": [f"n{i}" for i in range(2000)], "dropped": [["x" * 5000, "y" * 5000]], "bytes": 6}
    cell = read_cell_state(block(json.dumps(line).encode()), None)
    assert len(cell.report.kept) == 500
    assert len(cell.report.dropped[0].name) == 300
    assert len(cell.report.dropped[0].why) == 300


def test_notes_say_what_was_dropped_and_where_the_unrestored_names_come_back() -> None:
    report = StateReport(
        saved=True,
        kept=["x"],
        dropped=[NameNote(name="fh", why="an open file or stream: open it again")],
        not_restored=[NameNote(name="df", why="needs the module 'pandas', which this image does not have")],
    )
    dropped, unrestored = state_notes(report, "datascience", "minimal")
    assert "fh (an open file or stream: open it again)" in dropped
    assert "could not restore df (needs the module 'pandas'" in unrestored
    assert "image='datascience'" in unrestored
    assert "Pass requirements=['pandas']" in unrestored
    assert "stay saved" in unrestored
    assert state_notes(StateReport(saved=True, kept=["x"]), None, "minimal") == []


def test_no_module_of_the_server_imports_pickle_or_dill() -> None:
    """Only the sandbox's side (notebook_state.py, sent with the job and run by the runner in the
    sandbox) may: the server keeps states as bytes it never unpickles."""
    source = Path(__file__).parents[2] / "src" / "agent_sandbox"
    importers = set()
    for path in source.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name.split(".")[0] in {"pickle", "dill", "cloudpickle", "_pickle"} for name in names):
                importers.add(path.relative_to(source).as_posix())
    assert importers == {"engine/notebook_state.py"}
