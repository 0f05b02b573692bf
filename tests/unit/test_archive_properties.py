"""Property-based tests of the archive builder: whatever the input, it either refuses with
ArchiveError or produces a tar that can only create regular files and folders under /work,
holding exactly the bytes sent."""

from __future__ import annotations

import base64
import io
import posixpath
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sandbox.archive import Archive, ArchiveError, build_archive
from agent_sandbox.config import FileSettings
from agent_sandbox.models import ProjectFile

LIMITS = FileSettings(max_files=50, max_file_kib=64, max_total_kib=512)

# Paths from a tricky alphabet: separators, dots, backslashes, controls, NUL, bidi marks, non-ASCII.
TRICKY = st.text(alphabet=st.sampled_from(list("ab/.\\\0\n\t\x7f é名\u202e-_~:")), max_size=24)
SEGMENT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=12
).filter(
    lambda s: (
        s not in (".", "..")
        and "/" not in s
        and "\\" not in s
        and not set(s) & set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    )
)
SAFE_PATH = st.lists(SEGMENT, min_size=1, max_size=4).map("/".join)


def pack(files: list[ProjectFile]) -> Archive | str:
    """The archive, or the refusal's message."""
    try:
        return build_archive(files, LIMITS)
    except ArchiveError as refusal:
        return str(refusal)


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def safe(name: str) -> bool:
    parts = name.split("/")
    return (
        not name.startswith("/")
        and all(part not in ("", ".", "..") for part in parts)
        and not any(ord(char) < 32 or ord(char) == 127 for char in name)
        and posixpath.normpath("/work/" + name).startswith("/work/")
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(TRICKY, st.binary(max_size=64)), min_size=1, max_size=8))
def test_any_input_is_refused_or_packs_only_safe_files_and_folders(files: list[tuple[str, bytes]]) -> None:
    sent = [
        ProjectFile(path=path, content=base64.b64encode(data).decode(), encoding="base64")
        for path, data in files
    ]
    archive = pack(sent)
    if isinstance(archive, str):
        assert "files[" in archive
        return
    for member in members(archive.data):
        assert member.isfile() or member.isdir()
        assert safe(member.name), member.name
        assert (member.uid, member.gid) == (1000, 1000)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(SAFE_PATH, st.binary(max_size=256), min_size=1, max_size=10))
def test_valid_files_round_trip_byte_for_byte_or_clash_by_name(files: dict[str, bytes]) -> None:
    sent = [
        ProjectFile(path=path, content=base64.b64encode(data).decode(), encoding="base64")
        for path, data in files.items()
    ]
    archive = pack(sent)
    if isinstance(archive, str):  # only clashes between the generated paths may be refused
        assert "as a folder" in archive or "Unicode normalisation" in archive or "longer than" in archive
        return
    with tarfile.open(fileobj=io.BytesIO(archive.data)) as tar:
        unpacked = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert unpacked == files
    assert archive.paths == set(files)
