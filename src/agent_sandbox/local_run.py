"""``agent-sandbox run`` for a person: a local file or folder in, and the run shown the way a
terminal user wants it: the output live, the long steps as they start, one status line, and the
files saved where asked."""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from agent_sandbox.engine.base import STDERR, STDOUT
from agent_sandbox.errors import Refused, describe_invalid
from agent_sandbox.models import BatchItem, ProjectFile, RunResult
from agent_sandbox.run_store import RunRecord

SKIPPED_DIRS = frozenset({".git", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache"})
LONG_STEPS = {
    "resolving": "fetching wheels for the requirements",
    "installing": "installing them in the sandbox",
}

log = logging.getLogger("agent_sandbox")


def collect(path: Path, entrypoint: str | None) -> tuple[list[ProjectFile], str]:
    """Read a file or a folder into ``ProjectFile``s and name the entrypoint; binary files go as
    base64, links are never followed."""
    if path.is_file():
        return [_project_file(path, path.name)], entrypoint or path.name
    if not path.is_dir():
        raise Refused(f"{path} is neither a file nor a folder")
    files = []
    root = path.resolve()
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if SKIPPED_DIRS.intersection(relative.parts) or not file.is_file():
            continue
        if file.is_symlink() or not file.resolve().is_relative_to(root):
            # A link may point anywhere, e.g. at credentials outside the folder.
            log.warning("not sending %s: it is a symbolic link", relative)
            continue
        files.append(_project_file(file, relative.as_posix()))
    return files, entrypoint or "main.py"


def batch_items(path: Path, max_batch: int) -> list[BatchItem]:
    """The items of a batch file: a JSON array, or one JSON object per line; each refusal names
    the item (by its number) and what is wrong."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise Refused(f"cannot read the batch file {path}: {exc}") from None
    try:
        loaded = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as exc:
        raise Refused(f"{path} is not a JSON array nor JSON lines: {exc}") from None
    if not 1 <= len(loaded) <= max_batch:
        raise Refused(f"{path} holds {len(loaded)} items; a batch holds 1 to {max_batch} (server.max_batch)")
    items = []
    for index, item in enumerate(loaded):
        try:
            items.append(BatchItem.model_validate(item))
        except ValidationError as exc:
            raise Refused(f"items[{index}] of {path}: {describe_invalid(exc)}") from None
    return items


def _project_file(path: Path, name: str) -> ProjectFile:
    data = path.read_bytes()
    try:
        return ProjectFile(path=name, content=data.decode("utf-8"))
    except UnicodeDecodeError:
        return ProjectFile(path=name, content=base64.b64encode(data).decode(), encoding="base64")


def write_live(stream: int, data: bytes) -> None:
    """The engine's output callback: the program's bytes to our stdout (1) or stderr (2)."""
    if stream not in (STDOUT, STDERR):
        return  # not output (the limits reached so far)
    out = sys.stdout if stream == STDOUT else sys.stderr
    try:
        out.buffer.write(data)
        out.flush()
    except BrokenPipeError:
        _silence(out)


def say(text: str, out: TextIO | None = None) -> None:
    """Print a line of ours (stderr unless told), surviving a reader that left."""
    out = out or sys.stderr
    try:
        print(text, file=out, flush=True)
    except BrokenPipeError:
        _silence(out)


def _silence(out: TextIO) -> None:
    """The reader left (``| head``): the run goes on, and what is written there goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, out.fileno())
    os.close(devnull)


async def show_long_steps(stage: str, detail: str = "") -> None:
    """Say so when a run waits on something slower than starting a container."""
    if stage in LONG_STEPS:
        say(f"[agent-sandbox] {LONG_STEPS[stage]} ...")


def save_files(result: RunResult, folder: Path) -> list[str]:
    """Write the files that came back under ``folder``, never over an existing file; the paths
    saved. Each file not saved is named with the reason."""
    saved = []
    root = folder.resolve()
    for artifact in result.artifacts:
        target = root / artifact.path
        if artifact.data is None:
            why_not = artifact.omitted or "it did not come back"
        elif not target.resolve().is_relative_to(root):
            why_not = f"it would land outside {folder}"
        else:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("xb") as file:  # x: an existing file (or link) is kept
                    file.write(artifact.data)
            except FileExistsError:
                why_not = f"{folder / artifact.path} exists and is kept"
            except OSError as exc:
                why_not = str(exc)
            else:
                saved.append(str(folder / artifact.path))
                continue
        log.warning("not saving %s: %s", artifact.path, why_not)
    return saved


def status_line(result: RunResult, saved: list[str], folder: Path | None) -> str:
    """One line for a person: how it ended, what it used, the limits hit, the files; then the notes."""
    status = "timed out" if result.timed_out else f"exit {result.exit_code}"
    line = f"[agent-sandbox] {status} in {result.duration_s:.2f} s"
    if result.cpu_s is not None and result.peak_memory_mib is not None:
        line += f" ({result.cpu_s:.2f} s CPU, {result.peak_memory_mib:.0f} MiB peak memory)"
    if result.violations:
        line += "; limits hit: " + ", ".join(v.kind.value for v in result.violations)
    if folder is not None and result.artifacts:
        line += f"; {len(saved)} of {len(result.artifacts)} file(s) saved to {folder}"
        line += (": " + ", ".join(saved)) if saved else ""
    elif result.artifacts:
        line += f"; {len(result.artifacts)} file(s) written (--out DIR saves them)"
    return "\n".join([line, *(f"[agent-sandbox] {note}" for note in result.notes)])


def run_line(record: RunRecord) -> str:
    """One line for a person about a background run: its id, state, age and output so far."""
    line = f"{record.id} {record.state} {record.elapsed_s():.1f} s ({record.tool}, owner {record.owner})"
    if record.output is not None:
        line += f", {record.output.printed} bytes of output"
    return line + (f": {record.error}" if record.error else "")


def exit_code(result: RunResult, limit_code: int, engine_code: int) -> int:
    """The program's own exit code; ``limit_code`` when it exited 0 but hit a limit; 1 when its
    requirements failed to install (it never ran); ``engine_code`` when the engine cannot say."""
    if result.exit_code is None:
        return 1 if result.install_failed else engine_code
    if result.exit_code == 0 and result.violations:
        return limit_code
    return result.exit_code
