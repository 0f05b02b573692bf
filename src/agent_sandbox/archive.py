"""Turn a caller's files into a tar that holds only regular files and directories.

Pure and strict: every path is validated here, by our own rules, before anything reaches a
container. Python's ``tarfile`` extraction filters are not relied on (the sandbox's Python
predates them).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import tarfile
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from agent_sandbox.config import FileSettings
from agent_sandbox.errors import ArchiveError
from agent_sandbox.models import ProjectFile

SANDBOX_UID = 1000
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
# Marks that reorder how text is shown ("evil\u202efdp.py" displays as "evilyp.pdf").
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True)
class Archive:
    """A validated tar and what it holds."""

    data: bytes
    paths: frozenset[str]
    total_bytes: int


# A file as a caller sent it (decoded here, the only place the wire's text and base64 are), or
# one already held as bytes (a workspace's, a decoded requirements.txt).
Incoming = ProjectFile | tuple[str, bytes]


def build_archive(files: Sequence[Incoming], limits: FileSettings) -> Archive:
    """Validate ``files`` against the rules for what a caller may send and pack them into an
    uncompressed tar, or raise ``ArchiveError`` naming the first file that breaks one."""
    if len(files) > limits.max_files:
        raise ArchiveError(
            f"{len(files)} files were sent but at most {limits.max_files} are allowed; "
            "send fewer files (e.g. only the ones the program needs)"
        )
    contents: dict[str, bytes] = {}
    normalised: dict[str, str] = {}
    total = 0
    for index, file in enumerate(files):
        path = incoming_path(file)
        where = f"files[{index}] ({path!r})"
        check_path(path, where)
        key = unicodedata.normalize("NFC", path)
        if key in normalised:
            earlier = normalised[key]
            same = "the same path" if earlier == path else "the same path after Unicode normalisation"
            raise ArchiveError(f"{where}: {same} as {earlier!r} was already sent; send each file once")
        normalised[key] = path
        data = decode_content(file, where) if isinstance(file, ProjectFile) else file[1]
        if len(data) > limits.max_file_kib * 1024:
            raise ArchiveError(
                f"{where}: {len(data)} bytes is over the {limits.max_file_kib} KiB per-file limit; "
                "make the file smaller or have the program generate it"
            )
        total += len(data)
        if total > limits.max_total_kib * 1024:
            raise ArchiveError(
                f"{where}: the files add up to more than the {limits.max_total_kib} KiB total limit; "
                "send less data"
            )
        contents[path] = data
    directories = _directories(contents, normalised)
    return Archive(data=_pack(directories, contents), paths=frozenset(contents), total_bytes=total)


def incoming_path(file: Incoming) -> str:
    return file.path if isinstance(file, ProjectFile) else file[0]


def incoming_size(file: Incoming) -> int:
    """How many bytes ``file`` holds, without decoding it (base64 that is not valid is refused
    by ``build_archive`` with its own reason)."""
    if not isinstance(file, ProjectFile):
        return len(file[1])
    if file.encoding == "base64":
        return len(file.content) * 3 // 4 - file.content[-2:].count("=")
    return len(file.content.encode("utf-8", "surrogatepass"))


def check_path(path: str, where: str) -> None:
    """Raise ``ArchiveError`` unless ``path`` is a safe relative path under /work."""
    if not path:
        raise ArchiveError(f"{where}: the path is empty; give a relative path such as 'main.py'")
    for char in path:
        if char == "\0" or unicodedata.category(char) == "Cc":
            raise ArchiveError(
                f"{where}: the path contains the control character {char!r}; use printable characters only"
            )
        if char in BIDI_CONTROLS:
            raise ArchiveError(
                f"{where}: the path contains the text-direction control {char!r}, which can make a "
                "name look like another; remove it"
            )
    if "\\" in path:
        raise ArchiveError(f"{where}: the path contains a backslash; separate folders with '/'")
    if path.startswith("/"):
        raise ArchiveError(
            f"{where}: absolute paths are not allowed; give a path relative to /work, "
            f"e.g. {path.lstrip('/')!r}"
        )
    try:
        size = len(os.fsencode(path))  # a byte that is not UTF-8 stands in as a surrogate (filenames.py)
    except UnicodeEncodeError:
        raise ArchiveError(
            f"{where}: the path is not valid Unicode (a lone surrogate); use UTF-8 text"
        ) from None
    if size > MAX_PATH_BYTES:
        raise ArchiveError(f"{where}: the path is longer than {MAX_PATH_BYTES} bytes; shorten it")
    for segment in path.split("/"):
        if segment in ("", "."):
            raise ArchiveError(
                f"{where}: empty or '.' path segments are not allowed; "
                "write the path without '//', a trailing '/' or './'"
            )
        if segment == "..":
            raise ArchiveError(f"{where}: '..' segments are not allowed; files must stay inside /work")
        if len(os.fsencode(segment)) > MAX_NAME_BYTES:
            raise ArchiveError(f"{where}: the name {segment[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")


def decode_content(file: ProjectFile, where: str) -> bytes:
    if file.encoding == "utf-8":
        try:
            return file.content.encode("utf-8")
        except UnicodeEncodeError:
            raise ArchiveError(
                f"{where}: the text is not valid Unicode (a lone surrogate); "
                "send binary content with encoding 'base64'"
            ) from None
    try:
        return base64.b64decode(file.content.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ArchiveError(
            f"{where}: the content is not valid base64; encode the bytes with standard base64 "
            "(A-Z, a-z, 0-9, '+', '/', '=' padding) or send text with encoding 'utf-8'"
        ) from None


def _directories(contents: dict[str, bytes], normalised: dict[str, str]) -> list[str]:
    """Every parent folder, checked against files of the same name."""
    directories: set[str] = set()
    for index, path in enumerate(contents):  # every file, in the order sent
        parts = path.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            key = unicodedata.normalize("NFC", directory)
            if key in normalised:
                raise ArchiveError(
                    f"files[{index}]: {path!r} uses {normalised[key]!r} as a folder, but that is "
                    "sent as a file too; rename one of them"
                )
            directories.add(directory)
    return sorted(directories)


def _pack(directories: list[str], contents: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in directories:
            info = _info(directory, tarfile.DIRTYPE, 0o755, now)
            tar.addfile(info)
        for path, data in contents.items():
            info = _info(path, tarfile.REGTYPE, 0o644, now)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _info(name: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = SANDBOX_UID
    return info
