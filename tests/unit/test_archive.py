"""Every rule of the archive builder, and what a valid archive holds."""

from __future__ import annotations

import base64
import io
import tarfile

import pytest

from agent_sandbox.archive import ArchiveError, build_archive
from agent_sandbox.config import FileSettings
from agent_sandbox.models import ProjectFile

LIMITS = FileSettings(max_files=5, max_file_kib=1, max_total_kib=2)


def text(path: str, content: str = "x") -> ProjectFile:
    return ProjectFile(path=path, content=content)


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_valid_files_become_regular_files_and_parent_folders() -> None:
    binary = bytes(range(256))
    archive = build_archive(
        [
            text("main.py", "print('hi')"),
            text("pkg/sub/ünïcode名.py", "x = 1"),
            ProjectFile(path="data/blob.bin", content=base64.b64encode(binary).decode(), encoding="base64"),
            text("empty.txt", ""),
        ],
        FileSettings(),
    )
    found = members(archive.data)
    assert set(found) == {
        "main.py", "pkg", "pkg/sub", "pkg/sub/ünïcode名.py", "data", "data/blob.bin", "empty.txt",
    }  # fmt: skip
    assert all(m.isdir() for name, m in found.items() if name in {"pkg", "pkg/sub", "data"})
    assert all(m.isfile() for name, m in found.items() if "." in name)
    assert {m.uid for m in found.values()} == {1000}
    with tarfile.open(fileobj=io.BytesIO(archive.data)) as tar:
        blob = tar.extractfile("data/blob.bin")
        assert blob is not None
        assert blob.read() == binary
    assert found["empty.txt"].size == 0
    assert archive.paths == {"main.py", "pkg/sub/ünïcode名.py", "data/blob.bin", "empty.txt"}
    assert archive.total_bytes == len("print('hi')") + len("x = 1") + 256


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("../escape.py", "'..'"),
        ("a/../../b.py", "'..'"),
        ("a/..", "'..'"),
        (".", "'.'"),
        ("./main.py", "'.'"),
        ("a//b.py", "empty or '.'"),
        ("dir/", "empty or '.'"),
        ("a\\b.py", "backslash"),
        ("nul\0.py", "control character"),
        ("new\nline.py", "control character"),
        ("tab\t.py", "control character"),
        ("del\x7f.py", "control character"),
        ("invoice\u202efdp.py", "text-direction control"),
        ("\u2066hidden\u2069.py", "text-direction control"),
        ("x" * 256 + ".py", "longer than 255 bytes"),
        ("a/" * 600 + "b.py", "longer than 1024 bytes"),
    ],
)
def test_unsafe_paths_are_refused_by_name_and_rule(path: str, rule: str) -> None:
    with pytest.raises(ArchiveError) as refused:
        build_archive([text("ok.py"), text(path)], LIMITS)
    message = str(refused.value)
    assert "files[1]" in message
    assert rule in message


def test_duplicate_paths_are_refused() -> None:
    with pytest.raises(ArchiveError, match=r"files\[1\].*same path as 'a.py'"):
        build_archive([text("a.py"), text("a.py")], LIMITS)


def test_paths_equal_after_unicode_normalisation_are_refused() -> None:
    composed, decomposed = "caf\u00e9.py", "cafe\u0301.py"
    with pytest.raises(ArchiveError, match="after Unicode normalisation"):
        build_archive([text(composed), text(decomposed)], LIMITS)


@pytest.mark.parametrize("order", [("a", "a/b.py"), ("a/b.py", "a")])
def test_a_file_also_used_as_a_folder_is_refused(order: tuple[str, str]) -> None:
    index = order.index("a/b.py")
    with pytest.raises(ArchiveError, match=rf"files\[{index}\]: 'a/b\.py' uses 'a' as a folder, but that is"):
        build_archive([text(path) for path in order], LIMITS)


def test_too_many_files_are_refused() -> None:
    with pytest.raises(ArchiveError, match="6 files were sent but at most 5"):
        build_archive([text(f"f{i}.py") for i in range(6)], LIMITS)


def test_a_file_over_the_size_limit_is_refused() -> None:
    with pytest.raises(ArchiveError, match=r"files\[0\] \('big.txt'\): 1025 bytes is over the 1 KiB"):
        build_archive([text("big.txt", "x" * 1025)], LIMITS)


def test_files_over_the_total_limit_are_refused() -> None:
    files = [text(f"f{i}.txt", "x" * 1000) for i in range(3)]
    with pytest.raises(ArchiveError, match=r"files\[2\].*more than the 2 KiB total"):
        build_archive(files, LIMITS)


@pytest.mark.parametrize("content", ["not base64!", "YWJ", "YW Jj", "ÿÿÿÿ"])
def test_invalid_base64_is_refused(content: str) -> None:
    with pytest.raises(ArchiveError, match=r"files\[0\] \('b.bin'\): the content is not valid base64"):
        build_archive([ProjectFile(path="b.bin", content=content, encoding="base64")], LIMITS)


def test_text_that_is_not_valid_unicode_is_refused() -> None:
    with pytest.raises(ArchiveError, match="lone surrogate"):
        build_archive([text("s.txt", "\udc80")], LIMITS)
