"""Background runs on disk: each run's record, the output it has printed so far, and its result
once it ends, kept for ``runs.result_ttl_s`` and across restarts.

Layout under the configured folder (0700): ``<id>/meta.json`` (owner, state, times, the process
running it), ``<id>/output.json`` (the newest output, rewritten as it comes), ``<id>/result.json``
(the ``RunResult``, the files it brought back as base64 inside it) and ``<id>/cancel`` (asked by
another process). Every file is JSON written in one step, mode 0600: nothing is ever unpacked
or made executable. A run whose process is gone while its record says it runs is lost.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from agent_sandbox.config import RunSettings
from agent_sandbox.engine.launch import owner_id, owner_place, process_alive
from agent_sandbox.errors import RunError
from agent_sandbox.ids import new_id
from agent_sandbox.live_output import OutputSoFar
from agent_sandbox.models import ArtifactPreview, RunResult, RunStateName

RunState = RunStateName
IN_FLIGHT: frozenset[str] = frozenset({"queued", "running"})
_STATES: frozenset[str] = frozenset(get_args(RunState))
_ID = re.compile(r"[A-Za-z0-9_-]{22}")
ABANDONED_S = 3600.0  # a folder with no valid record this old is a write cut short
LOST_NOTE = (
    "the server stopped while this run was in flight, so it has no result; the output below is "
    "what it had printed by then. Start it again"
)


@dataclass(frozen=True)
class RunRecord:
    """One background run as the store knows it."""

    id: str
    owner: str
    tool: str
    state: RunState
    created: float
    ended: float | None
    timeout_s: float
    error: str | None  # failed: the refusal or engine error; lost: why
    output: OutputSoFar | None
    limits_hit: tuple[str, ...] = ()  # once finished: the result's violations, by kind

    @property
    def in_flight(self) -> bool:
        return self.state in IN_FLIGHT

    def elapsed_s(self, now: float | None = None) -> float:
        return round((self.ended or now or time.time()) - self.created, 3)


class RunStore:
    """Background runs' records and results on disk, each readable by its owner only."""

    def __init__(self, settings: RunSettings):
        self.settings = settings
        self.root = settings.path

    def create(self, owner: str, tool: str, timeout_s: float) -> RunRecord:
        """A new run record, queued, for ``owner``; this process runs it."""
        self.expire()
        run_id = new_id()
        folder = self.root / run_id
        self.root.mkdir(parents=True, mode=0o700, exist_ok=True)
        folder.mkdir(mode=0o700)
        meta = {
            "owner": owner,
            "tool": tool,
            "state": "queued",
            "created": time.time(),
            "ended": None,
            "timeout_s": timeout_s,
            "error": None,
            "runner": _runner(os.getpid()),
        }
        _write_json(folder / "meta.json", meta)
        return self._record(run_id, meta, None)

    def get(self, run_id: str, owner: str | None) -> RunRecord:
        """The run, if ``owner`` owns it (None: any owner, for the operator's command line)."""
        folder, meta = self._owned(run_id, owner)
        return self._record(run_id, meta, _read_output(folder))

    def runs(self, owner: str | None) -> list[RunRecord]:
        """``owner``'s runs (None: everyone's), newest first."""
        self.expire()
        records = []
        for folder in self._folders():
            meta = self._checked_meta(folder)
            if meta is not None and (owner is None or meta["owner"] == owner):
                records.append(self._record(folder.name, meta, _read_output(folder)))
        return sorted(records, key=lambda record: record.created, reverse=True)

    def in_flight(self, owner: str | None) -> int:
        """How many of ``owner``'s runs (None: all) are queued or running."""
        return sum(record.in_flight for record in self.runs(owner))

    def mark(self, run_id: str, state: RunState, error: str | None = None, **more: object) -> None:
        """Move the run to ``state``; an end state records when it ended."""
        folder = self.root / run_id
        meta = _read_json(folder / "meta.json")
        if meta is None:
            return  # removed meanwhile (expired, or the folder was cleared)
        ended = None if state in IN_FLIGHT else time.time()
        _write_json(folder / "meta.json", {**meta, "state": state, "ended": ended, "error": error, **more})

    def save_output(self, run_id: str, output: OutputSoFar) -> None:
        """Keep the newest output, so that a run lost with the server still shows it."""
        folder = self.root / run_id
        if folder.is_dir():
            _write_json(folder / "output.json", output.__dict__)

    def save_result(self, run_id: str, result: RunResult) -> None:
        """Keep the result (its files as base64 in the JSON, the viewer's previews beside them),
        and mark the run finished."""
        folder = self.root / run_id
        if not folder.is_dir():
            return
        files = {a.path: base64.b64encode(a.data).decode() for a in result.artifacts if a.data is not None}
        previews = {a.path: a.preview.model_dump() for a in result.artifacts if a.preview is not None}
        stored = {"result": result.model_dump(mode="json"), "files": files, "previews": previews}
        _write_json(folder / "result.json", stored)
        # What a list of runs shows of the result, without reading it.
        self.mark(run_id, "finished", limits_hit=[violation.kind.value for violation in result.violations])

    def result(self, run_id: str, owner: str | None) -> RunResult | None:
        """The finished run's result, as a foreground call returned it; None before it ends."""
        folder, _ = self._owned(run_id, owner)
        path = folder / "result.json"
        if not path.exists():
            return None
        unreadable = RunError(
            f"the stored result of run {run_id} cannot be read (it was changed on disk); start it again"
        )
        stored = _read_json(path)
        if stored is None:
            raise unreadable
        try:
            result = RunResult.model_validate(stored["result"])
            files = {name: base64.b64decode(data) for name, data in dict(stored.get("files", {})).items()}
            previews = {
                name: ArtifactPreview.model_validate(preview)
                for name, preview in dict(stored.get("previews", {})).items()
            }
        except (ValidationError, KeyError, TypeError, ValueError):
            raise unreadable from None
        artifacts = [
            a.model_copy(update={"data": files.get(a.path), "preview": previews.get(a.path)})
            for a in result.artifacts
        ]
        return result.model_copy(update={"artifacts": artifacts})

    def ask_to_cancel(self, run_id: str, owner: str | None) -> RunRecord:
        """Ask whichever process runs it to stop it (it looks every fraction of a second)."""
        folder, meta = self._owned(run_id, owner)
        if meta["state"] in IN_FLIGHT:
            (folder / "cancel").touch(mode=0o600)
        return self._record(run_id, meta, _read_output(folder))

    def cancel_asked(self, run_id: str) -> bool:
        return (self.root / run_id / "cancel").exists()

    def expire(self) -> int:
        """Remove results older than ``result_ttl_s``, then the oldest past ``max_stored_runs``,
        and folders that hold no valid record after an hour (a write cut short); runs in flight
        are kept. Returns how many were removed."""
        now = time.time()
        ended: list[tuple[float, Path]] = []
        removed = 0
        for folder in self._folders():
            meta = self._checked_meta(folder)
            if meta is None:
                with contextlib.suppress(OSError):
                    if now - folder.stat().st_mtime > ABANDONED_S:
                        shutil.rmtree(folder, ignore_errors=True)
                        removed += 1
                continue
            if meta["state"] in IN_FLIGHT:
                continue
            end = float(meta.get("ended") or meta["created"])
            if now - end > self.settings.result_ttl_s:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
            else:
                ended.append((end, folder))
        surplus = len(ended) - self.settings.max_stored_runs
        for _, folder in sorted(ended)[: max(surplus, 0)]:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        return removed

    def _owned(self, run_id: str, owner: str | None) -> tuple[Path, dict[str, Any]]:
        self.expire()
        missing = RunError(
            f"there is no run {run_id!r} for this client: it ended more than "
            f"{self.settings.result_ttl_s:g} s ago (or was among the oldest past the "
            f"{self.settings.max_stored_runs} kept) and its result was removed, or it belongs to "
            "another client. runs_list (or `agent-sandbox runs list`) shows the runs"
        )
        if not _ID.fullmatch(run_id):
            raise missing
        folder = self.root / run_id
        meta = self._checked_meta(folder)
        if meta is None or (owner is not None and meta["owner"] != owner and not self.settings.shared):
            raise missing  # the same answer as for an unknown id: ids are not probed
        return folder, meta

    def _checked_meta(self, folder: Path) -> dict[str, Any] | None:
        """The run's record, a lost run marked so; None when there is no valid one."""
        meta = _read_json(folder / "meta.json")
        if meta is None or not _valid(meta):
            return None
        if meta["state"] in IN_FLIGHT and _runner_alive(meta.get("runner")) is False:
            meta = {**meta, "state": "lost", "ended": time.time(), "error": LOST_NOTE}
            _write_json(folder / "meta.json", meta)
        return meta

    def _folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [folder for folder in self.root.iterdir() if _ID.fullmatch(folder.name) and folder.is_dir()]

    @staticmethod
    def _record(run_id: str, meta: dict[str, Any], output: OutputSoFar | None) -> RunRecord:
        return RunRecord(
            id=run_id,
            owner=meta["owner"],
            tool=str(meta.get("tool", "")),
            state=meta["state"],
            created=float(meta["created"]),
            ended=float(meta["ended"]) if meta.get("ended") is not None else None,
            timeout_s=float(meta.get("timeout_s", 0)),
            error=meta.get("error"),
            output=output,
            limits_hit=tuple(str(kind) for kind in meta.get("limits_hit") or ()),
        )


def _valid(meta: dict[str, Any]) -> bool:
    """A record this store wrote: anything else (changed on disk, cut short) is no run at all."""
    number = (int, float)
    return (
        meta.get("state") in _STATES
        and isinstance(meta.get("owner"), str)
        and isinstance(meta.get("created"), number)
        and isinstance(meta.get("ended"), (*number, type(None)))
        and isinstance(meta.get("timeout_s", 0), number)
    )


def _runner(pid: int) -> str:
    """The process running a run, as ``HOST/pidns:N:PID@START``: where its pid means something
    (``launch.owner_id``) and when it started (a reused pid has another start; empty where
    /proc cannot say)."""
    return f"{owner_id(pid)}@{_started(pid)}"


def _started(pid: int) -> str:
    """When process ``pid`` started, in clock ticks since boot; "" where /proc cannot say."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _runner_alive(runner: object) -> bool | None:
    """Whether the process that ran a run still does; None where this process cannot tell (a
    record it cannot read, a runner on another host or in another PID namespace)."""
    if not isinstance(runner, str) or "@" not in runner:
        return None
    owner, _, started = runner.rpartition("@")
    if owner_place(owner) != owner_place(owner_id()):
        return None
    pid = owner.rpartition(":")[2]
    if not process_alive(pid):
        return False
    return not started or _started(int(pid)) in ("", started)


def _read_output(folder: Path) -> OutputSoFar | None:
    raw = _read_json(folder / "output.json")
    if raw is None:
        return None
    try:
        return OutputSoFar(**{**raw, "limits_hit": tuple(raw.get("limits_hit") or ())})
    except TypeError:
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``path`` in one step (mode 0600): a reader sees the old content or the new."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as out:
        try:
            json.dump(value, out)
        except (OSError, TypeError, ValueError):
            os.unlink(out.name)
            raise
    os.replace(out.name, path)
