"""Workspaces: a run's /work kept between calls as a snapshot on the host's disk, restored into
the next run's fresh container. Never a kept container, and never unpacked on the host.

Layout under the configured folder: ``<id>/meta.json`` (owner, created, last used, what the
Python state holds) and ``<id>/snapshot.tar``, which this module writes itself from files the
sandbox streamed out, and reads back member by member into memory, refusing anything but regular
files and folders with clean paths within the size cap; and ``<id>/state.bin``, a notebook
cell's global names as the sandbox pickled them: opaque bytes here, handed only to a later
sandbox of the same workspace (never unpickled outside one).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_sandbox.archive import build_archive, check_path
from agent_sandbox.config import FileSettings, WorkspaceSettings
from agent_sandbox.errors import ArchiveError, WorkspaceError
from agent_sandbox.filenames import shown_name
from agent_sandbox.ids import new_id

_ID = re.compile(r"[A-Za-z0-9_-]{22}")
# Over stdio a client was once just "stdio"; now it is "stdio:" and the host application's name.
# A workspace of the old owner goes to the first stdio client that uses it, as it would have.
_OLD_STDIO_OWNER, _STDIO_PREFIX = "stdio", "stdio:"
_TAR_OVERHEAD = 1024 * 1024  # headers and padding a snapshot of max_kib may add


@dataclass(frozen=True)
class SavedState:
    """A workspace's Python state: bytes only a sandbox unpickles, and what the host was told of
    them (the names, the profile they were saved under)."""

    data: bytes
    names: tuple[str, ...]
    profile: str


@dataclass(frozen=True)
class WorkspaceInfo:
    """One workspace and what it holds."""

    id: str
    owner: str
    created: float
    used: float
    files: dict[str, int]  # path -> size
    state_names: tuple[str, ...] = ()  # the Python state's names, for a notebook cell
    state_bytes: int = 0
    state_profile: str | None = None


class WorkspaceStore:
    """Workspaces on disk, each owned by the client that created it (unless shared)."""

    def __init__(self, settings: WorkspaceSettings, max_members: int = 100_000):
        self.settings = settings
        self.root = settings.path
        self.max_members = max_members  # entries a snapshot may hold: files and their folders
        self._busy: set[str] = set()

    def create(self, owner: str) -> WorkspaceInfo:
        """A new, empty workspace for ``owner``."""
        self._check_enabled()
        self.expire()
        existing = [self._meta(folder) for folder in self._folders()]
        if len(existing) >= self.settings.max_count:
            raise WorkspaceError(
                f"this server already keeps {self.settings.max_count} workspaces; delete one you "
                "no longer need (workspace_delete), or work without one"
            )
        if sum(meta.get("owner") == owner for meta in existing) >= self.settings.max_per_client:
            raise WorkspaceError(
                f"this client already has {self.settings.max_per_client} workspaces; delete one "
                "you no longer need (workspace_delete)"
            )
        workspace_id = new_id()
        folder = self.root / workspace_id
        folder.mkdir(parents=True, mode=0o700)
        now = time.time()
        self._write_meta(folder, {"owner": owner, "created": now, "used": now})
        _replace(folder / "snapshot.tar", build_archive([], FileSettings()).data)
        return WorkspaceInfo(workspace_id, owner, now, now, {})

    def describe(self, workspace_id: str, owner: str) -> WorkspaceInfo:
        """The workspace and the size of every file in it."""
        folder, meta = self._owned(workspace_id, owner)
        files = {path: len(data) for path, data in self._read_snapshot(folder).items()}
        state = meta.get("state") or {}
        return WorkspaceInfo(
            workspace_id,
            meta["owner"],
            meta["created"],
            meta["used"],
            files,
            state_names=tuple(state.get("names", ())),
            state_bytes=int(state.get("bytes", 0)),
            state_profile=state.get("profile"),
        )

    def state(self, workspace_id: str, owner: str) -> SavedState | None:
        """The Python state the workspace's last stateful cell kept, if any (its bytes unread)."""
        folder, meta = self._owned(workspace_id, owner)
        state = meta.get("state")
        if not state:
            return None
        path = folder / "state.bin"
        try:
            if path.stat().st_size > self.settings.max_state_kib * 1024:
                raise _refused_state(workspace_id, f"it is over the {self.settings.max_state_kib} KiB cap")
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _refused_state(workspace_id, f"it cannot be read ({exc})") from None
        return SavedState(data, tuple(state.get("names", ())), str(state.get("profile", "")))

    def save_state(self, workspace_id: str, owner: str, state: SavedState | None) -> None:
        """Make ``state`` the workspace's Python state (None: it has none)."""
        folder, meta = self._owned(workspace_id, owner)
        if state is None:
            self._write_meta(folder, {**meta, "state": None})
            (folder / "state.bin").unlink(missing_ok=True)
            return
        _replace(folder / "state.bin", state.data)
        described = {"names": list(state.names), "bytes": len(state.data), "profile": state.profile}
        self._write_meta(folder, {**meta, "state": described, "used": time.time()})

    def files(self, workspace_id: str, owner: str) -> dict[str, bytes]:
        """Every file in the workspace, read from its snapshot into memory."""
        folder, _ = self._owned(workspace_id, owner)
        return self._read_snapshot(folder)

    def read(self, workspace_id: str, owner: str, path: str) -> bytes:
        """One file of the workspace."""
        files = self.files(workspace_id, owner)
        if path not in files:
            listed = ", ".join(shown_name(name) for name in sorted(files)[:20]) or "none"
            raise WorkspaceError(
                f"workspace {workspace_id!r} has no file '{shown_name(path)}'; it has: {listed}"
            )
        return files[path]

    def save(self, workspace_id: str, owner: str, contents: dict[str, bytes], files: FileSettings) -> None:
        """Make ``contents`` the workspace's state (replacing the snapshot in one step), if it
        is one a later run can start from: within the rules for a caller's files."""
        folder, meta = self._owned(workspace_id, owner)
        try:
            for path in contents:  # named as the caller sees it (filenames.py), not by index
                check_path(path, f"'{shown_name(path)}'")
            # The same checks a restore will meet; the tar they make is the snapshot.
            _replace(folder / "snapshot.tar", build_archive(list(contents.items()), files).data)
        except ArchiveError as exc:
            raise WorkspaceError(f"a later run could not start from it: {_first_line(exc)}") from None
        except (UnicodeError, OSError) as exc:
            raise WorkspaceError(f"it could not be written: {exc}") from None
        self._write_meta(folder, {**meta, "used": time.time()})

    def reset_state(self, workspace_id: str, owner: str) -> None:
        """Forget the workspace's Python state; its files stay."""
        self._owned(workspace_id, owner)
        if workspace_id in self._busy:
            raise WorkspaceError(
                f"workspace {workspace_id!r} is in use by a run; clear its state when that ends"
            )
        self.save_state(workspace_id, owner, None)

    def delete(self, workspace_id: str, owner: str) -> None:
        """Remove the workspace and its files."""
        folder, _ = self._owned(workspace_id, owner)
        if workspace_id in self._busy:
            raise WorkspaceError(f"workspace {workspace_id!r} is in use by a run; delete it when that ends")
        shutil.rmtree(folder)

    def expire(self) -> int:
        """Drop workspaces idle longer than ``idle_ttl_s``; returns how many."""
        dropped = 0
        now = time.time()
        for folder in self._folders():
            meta = self._meta(folder)
            idle = now - float(meta.get("used", 0))
            if folder.name not in self._busy and idle > self.settings.idle_ttl_s:
                shutil.rmtree(folder, ignore_errors=True)
                dropped += 1
        return dropped

    @contextlib.contextmanager
    def in_use(self, workspace_id: str, owner: str) -> Iterator[None]:
        """Hold the workspace for one run; a second run on it meanwhile is refused."""
        self._owned(workspace_id, owner)
        if workspace_id in self._busy:
            raise WorkspaceError(
                f"workspace {workspace_id!r} is in use by another run; wait for that run to finish, "
                "then try again (runs on one workspace go one at a time)"
            )
        self._busy.add(workspace_id)
        try:
            yield
        finally:
            self._busy.discard(workspace_id)

    def _owned(self, workspace_id: str, owner: str) -> tuple[Path, dict[str, Any]]:
        self._check_enabled()
        self.expire()
        missing = WorkspaceError(
            f"there is no workspace {workspace_id!r} for this client: it was deleted, dropped after "
            f"{self.settings.idle_ttl_s:g} s unused, or belongs to another client. Create one with "
            "workspace_create"
        )
        if not _ID.fullmatch(workspace_id):
            raise missing
        folder = self.root / workspace_id
        if not folder.is_dir():
            raise missing
        meta = self._meta(folder)
        if meta.get("owner") == _OLD_STDIO_OWNER and owner.startswith(_STDIO_PREFIX):
            meta = {**meta, "owner": owner}
            self._write_meta(folder, meta)
        if meta.get("owner") != owner and not self.settings.shared:
            raise missing  # the same answer as for an unknown id: ids are not probed
        return folder, meta

    def _check_enabled(self) -> None:
        if not self.settings.enabled:
            raise WorkspaceError("workspaces are turned off on this server; send every file with each call")

    def _folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [folder for folder in self.root.iterdir() if _ID.fullmatch(folder.name) and folder.is_dir()]

    @staticmethod
    def _meta(folder: Path) -> dict[str, Any]:
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    @staticmethod
    def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
        _replace(folder / "meta.json", json.dumps(meta).encode())

    def _read_snapshot(self, folder: Path) -> dict[str, bytes]:
        """The snapshot's files, read into memory member by member; anything but regular files
        and folders with clean paths, within the caps, refuses the whole snapshot."""
        path = folder / "snapshot.tar"
        cap = self.settings.max_kib * 1024
        try:
            size = path.stat().st_size
        except OSError:
            raise _refused(folder.name, "it is missing") from None
        if size > cap + _TAR_OVERHEAD:
            raise _refused(folder.name, f"it is {size} bytes, over the {self.settings.max_kib} KiB cap")
        contents: dict[str, bytes] = {}
        total = 0
        try:
            with tarfile.open(path, mode="r:") as tar:
                for count, member in enumerate(tar):
                    if count >= self.max_members:
                        raise _refused(folder.name, f"it has more than {self.max_members} entries")
                    try:
                        check_path(member.name, repr(member.name))
                    except ArchiveError as exc:
                        raise _refused(folder.name, str(exc)) from None
                    if member.isdir():
                        continue
                    if not member.isfile():
                        raise _refused(folder.name, f"{member.name!r} is not a regular file or folder")
                    total += member.size
                    if total > cap:
                        raise _refused(
                            folder.name, f"its files add up to more than {self.settings.max_kib} KiB"
                        )
                    source = tar.extractfile(member)
                    assert source is not None
                    contents[member.name] = source.read(member.size)
        except (tarfile.TarError, OSError) as exc:
            raise _refused(folder.name, f"it cannot be read ({exc})") from None
        return contents


def _refused(workspace_id: str, why: str) -> WorkspaceError:
    return WorkspaceError(
        f"the snapshot of workspace {workspace_id!r} was refused and nothing was unpacked: {why}. "
        "Delete the workspace (workspace_delete) and start a new one"
    )


def _refused_state(workspace_id: str, why: str) -> WorkspaceError:
    return WorkspaceError(
        f"the Python state of workspace {workspace_id!r} was refused: {why}. Clear it "
        "(workspace_reset_state); the workspace's files stay"
    )


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0]


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` in one step: a reader sees the old content or the new, never half."""
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as out:
        try:
            out.write(data)
        except OSError:
            os.unlink(out.name)
            raise
    os.replace(out.name, path)
