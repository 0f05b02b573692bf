"""The host's side of a notebook cell's Python state: what the sandbox said it kept, read as
untrusted JSON, and the notes a model reads. The state itself stays opaque bytes here: it is
pickled and unpickled only inside sandboxes (``engine/notebook_state.py``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_sandbox.engine.protocol import STATE_DATA, STATE_REPORT, STATE_REPORT_BYTES
from agent_sandbox.engine.spec import FilesOut
from agent_sandbox.models import NameNote, StateReport
from agent_sandbox.packages.missing import module_named
from agent_sandbox.workspaces import SavedState

# As engine/notebook_state.py words a name that needs a module the image lacks.
_NEEDS_MODULE = re.compile(r"needs the module '(?P<module>[A-Za-z0-9_.]+)'")
MAX_LISTED = 500  # names the result lists of each kind
MAX_WHY_CHARS = 300
NAMED_IN_NOTES = 8


class _RunnerReport(BaseModel):
    """The runner's report line, as the sandbox wrote it: checked, capped, never trusted."""

    model_config = ConfigDict(extra="ignore")

    kept: list[str] = Field(default=[])
    kept_count: int | None = None
    dropped: list[tuple[str, str]] = Field(default=[])
    not_restored: list[tuple[str, str]] = Field(default=[])
    bytes: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class CellState:
    """What came back of a cell's state: the report and the bytes to keep, or why there are none."""

    report: StateReport
    data: bytes | None  # None: nothing to keep (the workspace keeps what it had)


def read_cell_state(block: FilesOut | None, before: SavedState | None) -> CellState:
    """The state block of a finished cell. Without a usable one, the workspace keeps the names
    it had (``before``) and the report says why."""
    if block is None:
        return _not_saved(before, "the sandbox ended before it could send it")
    if block.refused is not None:
        return _not_saved(before, block.refused)
    parts = dict(block.contents())
    report_line = parts.get(STATE_REPORT, b"")
    try:
        if len(report_line) > STATE_REPORT_BYTES:
            raise ValueError("too long")
        line = _RunnerReport.model_validate_json(report_line)
    except (ValidationError, ValueError):
        return _not_saved(before, "the sandbox's report on it could not be read")
    if line.error is not None:
        return _not_saved(before, f"saving it failed in the sandbox ({line.error[:MAX_WHY_CHARS]})")
    data = parts.get(STATE_DATA, b"")
    if line.bytes != len(data):
        return _not_saved(before, f"it came back cut short ({len(data)} of {line.bytes} bytes)")
    report = StateReport(
        saved=True,
        kept=[name[:MAX_WHY_CHARS] for name in line.kept[:MAX_LISTED]],
        kept_count=max(line.kept_count or 0, len(line.kept)),
        dropped=_notes(line.dropped),
        not_restored=_notes(line.not_restored),
        bytes=len(data),
    )
    return CellState(report, data)


def state_notes(report: StateReport, saved_profile: str | None, profile: str) -> list[str]:
    """Plain-language notes on what the next cell will and will not find."""
    notes = []
    if report.note is not None:
        notes.append(f"Python state: {report.note}.")
    if report.dropped:
        notes.append(
            f"Python state: not kept for the next call: {_listed(report.dropped)}. Recreate them "
            "there (the names above say how); everything else is kept."
        )
    if report.not_restored:
        elsewhere = (
            f" They were saved under the {saved_profile!r} profile and this call ran on {profile!r}: "
            f"run with image={saved_profile!r} to get them back."
            if saved_profile and saved_profile != profile
            else ""
        )
        notes.append(
            f"Python state: could not restore {_listed(report.not_restored)}.{elsewhere}{_packages(report)} "
            "They stay saved for a later call that can restore them, unless this call defined them anew."
        )
    return notes


def _packages(report: StateReport) -> str:
    """The requirements that would bring back names that need a missing module (a package an
    earlier call installed is installed for that call only)."""
    wanted = []
    for entry in report.not_restored:
        found = _NEEDS_MODULE.match(entry.why)
        missing = module_named(found["module"]) if found else None
        if missing is not None and missing.requirement not in wanted:
            wanted.append(missing.requirement)
    return (
        f" Pass requirements={wanted!r} (as the call that made them did) to get them back." if wanted else ""
    )


def _not_saved(before: SavedState | None, why: str) -> CellState:
    kept = list(before.names)[:MAX_LISTED] if before else []
    note = f"not saved, the next call starts with the names of before this call: {why}"
    size = len(before.data) if before else 0
    count = len(before.names) if before else 0
    return CellState(StateReport(saved=False, kept=kept, kept_count=count, bytes=size, note=note), None)


def _notes(pairs: list[tuple[str, str]]) -> list[NameNote]:
    return [NameNote(name=name[:MAX_WHY_CHARS], why=why[:MAX_WHY_CHARS]) for name, why in pairs[:MAX_LISTED]]


def _listed(names: list[NameNote]) -> str:
    shown = "; ".join(f"{entry.name} ({entry.why})" for entry in names[:NAMED_IN_NOTES])
    more = f"; and {len(names) - NAMED_IN_NOTES} more" if len(names) > NAMED_IN_NOTES else ""
    return shown + more
