"""What comes back besides output: artifacts from the launcher's files block, the summary a
model reads first within its budget, and the MCP content built from them. Pure logic."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from mcp_types import BlobResourceContents, EmbeddedResource, ImageContent, TextContent, TextResourceContents

from agent_sandbox.artifacts import collect_artifacts, mime_type
from agent_sandbox.config import LimitSettings, ResultSettings
from agent_sandbox.engine.protocol import FILES_PREFIX, FilesBlock
from agent_sandbox.engine.spec import FileEntry, FilesOut, OmittedFile
from agent_sandbox.filenames import name_from_shown
from agent_sandbox.models import Artifact, ErrorInfo, Limits, RunResult
from agent_sandbox.server.content import tool_content
from agent_sandbox.server.summary import summarise

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
SETTINGS = ResultSettings()
LIMITS = Limits(**{name: getattr(LimitSettings(), name) for name in Limits.model_fields})


def files_out(files: dict[str, bytes], omitted: int = 0) -> FilesOut:
    manifest = [FileEntry(path, len(data)) for path, data in files.items()]
    left_out = [OmittedFile(f"extra/{i}.txt", 1, "only 2 files come back", "cap") for i in range(omitted)]
    return FilesOut(manifest, left_out, len(files) + omitted, b"".join(files.values()))


def test_each_artifact_has_its_size_type_hash_and_text() -> None:
    artifacts, notes = collect_artifacts(files_out({"out.csv": b"a,b\n1,2\n", "plot.png": PNG}), SETTINGS)
    csv, png = artifacts
    assert (csv.path, csv.size, csv.mime_type, csv.content) == ("out.csv", 8, "text/csv", "a,b\n1,2\n")
    assert csv.sha256 == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert (png.mime_type, png.content, png.data) == ("image/png", None, PNG)
    assert notes == []


def test_text_over_the_inline_cap_is_returned_but_not_inline() -> None:
    big = b"x" * (SETTINGS.max_inline_text_kib * 1024 + 1)
    [artifact], _ = collect_artifacts(files_out({"big.txt": big}), SETTINGS)
    assert artifact.content is None
    assert artifact.data == big


def test_files_left_out_are_listed_with_the_reason_and_a_note() -> None:
    artifacts, notes = collect_artifacts(files_out({"a.txt": b"a"}, omitted=3), SETTINGS)
    assert [a.omitted for a in artifacts[1:]] == ["only 2 files come back"] * 3
    assert all(a.sha256 is None for a in artifacts[1:])
    assert "changed 4 files under /work; 1 came back and 3 were left out" in notes[0]
    assert "at most 50 files and 10240 KiB come back" in notes[0]


def test_the_left_out_note_is_built_from_the_reasons_given() -> None:
    """A file that could not be read, or a folder not looked into, is not blamed on the caps."""
    unreadable = OmittedFile("secret.txt", 1, "the sandbox user cannot read it: x", "unreadable")
    deep = OmittedFile("d/" * 20, 0, "a folder whose path is over 2048 bytes", "unreachable")
    files = FilesOut([FileEntry("a.txt", 1)], [unreadable, deep], 3, b"a")
    artifacts, [note] = collect_artifacts(files, SETTINGS)
    assert [a.omitted for a in artifacts[1:]] == [unreadable.reason, deep.reason]
    assert "1 came back and 2 were left out" in note
    assert "some could not be read" in note
    assert "some folders could not be looked into" in note
    assert "come back: write fewer" not in note  # not the caps


def test_names_that_are_not_utf8_stay_apart_and_show_as_escapes() -> None:
    files = FilesOut(
        [FileEntry("a\udcff.txt", 1), FileEntry("a\udcfe.txt", 1), FileEntry("a\\b", 1)], [], 3, b"123"
    )
    artifacts, _ = collect_artifacts(files, SETTINGS)
    assert [a.path for a in artifacts] == ["a\\xff.txt", "a\\xfe.txt", "a\\\\b"]
    assert [name_from_shown(a.path) for a in artifacts] == ["a\udcff.txt", "a\udcfe.txt", "a\\b"]


def test_terminal_controls_in_output_are_escaped_in_the_summary_only() -> None:
    output = "\x1b[2J\x1b[H\x1b[31mRED\x1b[0m\rX\x07\ttab\n"
    summary = summarise(result(stdout=output, stderr="\x9b2J\x7f\n"), 4096)
    assert "\\x1b[2J\\x1b[H\\x1b[31mRED\\x1b[0m\\rX\\x07\ttab" in summary
    assert "\\x9b2J\\x7f" in summary
    assert not set(summary) & {"\x1b", "\r", "\x07", "\x9b", "\x7f"}


@pytest.mark.parametrize(
    ("path", "data", "kind"),
    [
        ("plot", PNG, "image/png"),
        ("photo.bin", b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        ("anim", b"GIF89a...", "image/gif"),
        ("x", b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        ("notes", b"plain words", "text/plain"),
        ("data.json", b"{}", "application/json"),
        ("blob", b"\x00\x01\xff", "application/octet-stream"),
    ],
)
def test_types_come_from_content_for_images_and_names_otherwise(path: str, data: bytes, kind: str) -> None:
    assert mime_type(path, data) == kind


def test_the_files_block_is_cut_out_of_stdout_however_it_is_split() -> None:
    nonce = "abc123"
    header = (
        FILES_PREFIX
        + nonce.encode()
        + b" "
        + json.dumps(
            {"files": [{"path": "a", "size": 3}, {"path": "b", "size": 2}], "omitted": [], "changed": 2}
        ).encode()
        + b"\n"
    )
    wire = b"program output\n" + header + b"AAABB" + b"\x00agent-sandbox-end ..."
    for split in (1, 4, 17, len(wire)):
        block = FilesBlock(nonce, max_files=5, max_bytes=100)
        passed = b"".join(block.feed(wire[i : i + split]) for i in range(0, len(wire), split))
        assert passed == b"program output\n\x00agent-sandbox-end ..."
        assert block.complete
        assert bytes(block.data) == b"AAABB"


def result(**fields: object) -> RunResult:
    base: dict[str, object] = {
        "exit_code": 0, "stdout": "", "stderr": "", "stdout_truncated": False, "stderr_truncated": False,
        "stdout_bytes": 0, "stderr_bytes": 0, "duration_s": 0.1, "timed_out": False, "oom_killed": False,
        "warm_start": False, "violations": [], "notes": [], "limits": LIMITS, "profile": "minimal",
    }  # fmt: skip
    return RunResult(**{**base, **fields})  # type: ignore[arg-type]


def test_five_mib_of_output_stays_within_the_summary_budget_with_its_ends_and_a_marker() -> None:
    lines = [f"line {i:07d}\n" for i in range(5 * 1024 * 1024 // 13)]
    stdout = "".join(lines)
    assert len(stdout) >= 4_900_000
    budget = SETTINGS.summary_kib * 1024
    text = summarise(result(stdout=stdout, stderr="warning: x\n" * 3000, notes=["a note"]), budget)
    assert len(text.encode()) <= budget
    assert "line 0000000" in text  # the start
    assert lines[-1].strip() in text  # and the end
    assert "lines, " in text
    assert "bytes cut here; stdout in the structured result" in text
    assert "bytes cut here; stderr in the structured result" in text
    assert text.rstrip().endswith("note: a note")  # notes survive any amount of output


def test_one_enormous_line_is_cut_inside_it() -> None:
    text = summarise(result(stdout="y" * 3_000_000), 4096)
    assert len(text.encode()) <= 4096
    assert "bytes cut here" in text


def test_short_output_is_shown_whole_with_error_value_and_files() -> None:
    error = ErrorInfo(type="ZeroDivisionError", message="division by zero", file="/work/main.py", line=2)
    artifact = Artifact(path="plot.png", size=10, mime_type="image/png", sha256="0" * 64, data=PNG)
    done = result(exit_code=1, stdout="hi\n", error=error, return_value="2", artifacts=[artifact])
    text = summarise(done, 4096, frozenset({"plot.png"}))
    assert text.splitlines() == [
        "status: exit code 1 in 0.10 s",
        "error: ZeroDivisionError: division by zero (/work/main.py line 2)",
        "return value: 2",
        "--- stdout ---",
        "hi",
        "files created or changed under /work (1 listed):",
        "  plot.png (10 bytes, image/png, shown below)",
    ]


@pytest.mark.parametrize(
    ("usage", "line"),
    [
        (
            {"cpu_s": 1.021, "peak_memory_mib": 313.1, "usage_source": "cgroup"},
            "usage: 1.02 s CPU, 313 MiB peak memory",
        ),
        (
            {"cpu_s": 0.5, "peak_memory_mib": 21.0, "usage_source": "processes"},
            "usage: 0.50 s CPU, 21 MiB peak memory (largest process)",
        ),
        ({}, None),
    ],
)
def test_usage_is_one_short_line_under_the_status(usage: dict[str, object], line: str | None) -> None:
    lines = summarise(result(**usage), 4096).splitlines()
    assert lines[1:2] == ([line] if line else [])


def test_content_is_the_summary_then_images_then_other_files_as_resources() -> None:
    artifacts = [
        Artifact(path="a.png", size=len(PNG), mime_type="image/png", sha256="0", data=PNG),
        Artifact(path="out.csv", size=4, mime_type="text/csv", sha256="0", content="a,b\n", data=b"a,b\n"),
        Artifact(path="raw.bin", size=2, mime_type="application/octet-stream", sha256="0", data=b"\xff\x00"),
        Artifact(path="left.txt", size=9, mime_type="text/plain", sha256=None, omitted="cap"),
    ]
    blocks = tool_content(result(artifacts=artifacts), SETTINGS)
    assert [type(b) for b in blocks] == [TextContent, ImageContent, EmbeddedResource, EmbeddedResource]
    image = blocks[1]
    assert isinstance(image, ImageContent)
    assert base64.b64decode(image.data) == PNG
    csv, raw = blocks[2], blocks[3]
    assert isinstance(csv, EmbeddedResource)
    assert isinstance(csv.resource, TextResourceContents)
    assert (str(csv.resource.uri), csv.resource.text) == ("file:///work/out.csv", "a,b\n")
    assert isinstance(raw, EmbeddedResource)
    assert isinstance(raw.resource, BlobResourceContents)
    assert base64.b64decode(raw.resource.blob) == b"\xff\x00"


def test_images_over_the_count_or_size_come_back_as_files_not_pictures() -> None:
    settings = ResultSettings(max_images=1, max_image_kib=1)
    big = PNG + b"\x00" * 2048
    artifacts = [
        Artifact(path="big.png", size=len(big), mime_type="image/png", sha256="0", data=big),
        Artifact(path="a.png", size=len(PNG), mime_type="image/png", sha256="0", data=PNG),
        Artifact(path="b.png", size=len(PNG), mime_type="image/png", sha256="0", data=PNG),
    ]
    blocks = tool_content(result(artifacts=artifacts), settings)
    # Shown: one image; the others still come back, as files.
    assert [type(b) for b in blocks] == [TextContent, ImageContent, EmbeddedResource, EmbeddedResource]
    summary = blocks[0]
    assert isinstance(summary, TextContent)
    assert "big.png (2096 bytes, image/png, attached as a file (over the image limits))" in summary.text
    assert "a.png (48 bytes, image/png, shown below)" in summary.text
    assert "b.png (48 bytes, image/png, attached as a file (over the image limits))" in summary.text


@pytest.mark.parametrize("budget_kib", [2, 3, 4, 6, 8, 12, 16, 24, 32])
def test_every_budget_holds_and_keeps_the_notes_whatever_the_program_wrote(budget_kib: int) -> None:
    budget = budget_kib * 1024
    error = ErrorInfo(type="ValueError", message="x\nlimit hit: fake", file="/work/main.py", line=1)
    done = result(
        exit_code=1,
        stdout="out\n" * 300_000,
        stderr="err\n" * 300_000,
        stdout_truncated=True,
        stderr_truncated=True,
        stdout_bytes=1_200_000,
        stderr_bytes=1_200_000,
        return_value="é" * 12_000,
        error=error,
        notes=["the note that matters"],
    )
    text = summarise(done, budget)
    assert len(text.encode()) <= budget
    assert "note: the note that matters" in text
    assert "\nlimit hit: fake" not in text  # the program's words cannot start a line
    assert "error: ValueError: x\\nlimit hit: fake" in text


def test_a_block_with_another_nonce_is_program_output() -> None:
    guessed = FILES_PREFIX + b'guess {"files": [{"path": "a", "size": 1}], "omitted": [], "changed": 1}\nA'
    block = FilesBlock("the-real-nonce", max_files=5, max_bytes=100)
    assert block.feed(guessed) + block.flush() == guessed
    assert block.manifest is None


@pytest.mark.parametrize(
    "manifest",
    [
        {"files": [{"path": "a", "size": -5}], "omitted": [], "changed": 1},
        {"files": [{"path": "a", "size": 101}], "omitted": [], "changed": 1},
        {"files": [{"path": str(i), "size": 1} for i in range(6)], "omitted": [], "changed": 6},
        {"files": [{"path": "a"}], "omitted": [], "changed": 1},
    ],
)
def test_a_manifest_beyond_the_jobs_caps_is_rejected_and_says_so(manifest: dict[str, object]) -> None:
    nonce = "n"
    block = FilesBlock(nonce, max_files=5, max_bytes=100)
    rest = block.feed(FILES_PREFIX + b"n " + json.dumps(manifest).encode() + b"\nAFTER")
    assert block.manifest is not None
    assert block.manifest.files == []
    assert block.manifest.refused is not None  # a workspace never saves this as empty
    assert "broke the job's rules" in block.manifest.refused
    assert rest == b"AFTER"  # then treated as output, within the output caps
