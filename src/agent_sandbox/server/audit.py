"""The audit log: one JSON line per tool call. Who ran what, with which limits, and how it
ended; a hash of the files, never their contents, and never the program's output."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from agent_sandbox.models import RunRequest, RunResult

# A call's records: ``started`` when its run begins, then one of the other three.
AuditEvent = Literal["started", "finished", "refused", "ended"]


class AuditLog:
    """Appends records to a JSON-lines file, owner-only, never through a symbolic link.

    Each call writes ``started`` when its run begins, then ``finished``, ``refused`` or ``ended``
    (interrupted), so a run that crashed the server is still on the record."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.fchmod(self._fd, 0o600)

    def record(
        self,
        *,
        event: AuditEvent,
        transport: str,
        client: str,
        tool: str,
        request: RunRequest | None,
        result: RunResult | None,
        refusal: str | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "event": event,
            "transport": transport,
            "client": client,
            "tool": tool,
        }
        if request is not None:
            entry |= {
                "files_sha256": files_fingerprint(request),
                "file_count": len(request.files),
                "entrypoint": request.entrypoint,
                "arg_count": len(request.args),
                "env_names": sorted(request.env),
                "stdin_bytes": len(request.stdin.encode()) if request.stdin is not None else None,
                "profile": request.profile,
                "requirements": request.requirements,
            }
        if result is not None:
            entry |= {
                "limits": result.limits.model_dump(),
                "exit_code": result.exit_code,
                "timed_out": result.timed_out,
                "oom_killed": result.oom_killed,
                "warm_start": result.warm_start,
                "violations": [violation.kind.value for violation in result.violations],
                "duration_s": result.duration_s,
                "wheels": result.install.wheels if result.install else [],
            }
        if refusal is not None:
            entry["refused"] = refusal
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)


def files_fingerprint(request: RunRequest) -> str:
    """One SHA-256 over every (path, encoding, content) sent, in path order."""
    digest = hashlib.sha256()
    for file in sorted(request.files, key=lambda f: f.path):
        content = hashlib.sha256(file.content.encode(errors="surrogatepass")).hexdigest()
        for part in (file.path, file.encoding, content):
            digest.update(part.encode(errors="surrogatepass") + b"\0")
    return digest.hexdigest()
