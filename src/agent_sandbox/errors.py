"""Every error a run can end in instead of a result, in one tree. Each message says what to change.

    SandboxError
    ├── Refused              the request was refused: nothing ran
    │   ├── ArchiveError     a file, path or size broke the rules for what a caller may send
    │   ├── PackageRefused   a requirement the package policy or the index refused
    │   ├── WorkspaceError   a workspace call that cannot be done (unknown, busy, full, off)
    │   ├── RunError         a background run that is unknown, not this client's, or capped
    │   ├── RateLimited      the client started too many runs in the last minute
    │   └── Busy             no run slot and no place in a queue
    └── EngineError          the engine could not run it: not the request's fault
        ├── EngineUnavailable  no engine answers
        └── ImageMissing       the profile's image is not there

Callers match the few they treat apart (``Busy``, ``RateLimited``) and then the two branches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class SandboxError(Exception):
    """A run ended in an error instead of a result; the message says what to change."""


class Refused(SandboxError, ValueError):
    """The request was refused and nothing ran; the message names what is wrong and what to do.
    (A ValueError too, as the refusals it gathers were before.)"""


class ArchiveError(Refused):
    """A file was refused; the message names it and the rule it broke."""


class PackageRefused(Refused):
    """A requirement was refused; the message names it and why."""


class WorkspaceError(Refused):
    """A workspace call was refused; the message says why and what to do instead."""


class RunError(Refused):
    """A call about a background run was refused: no such run, or too many in flight."""


class RateLimited(Refused):
    """A client started too many runs in the last minute; the message says how long to wait."""


class Busy(Refused):
    """No place to run or to wait; the message says how many runs are running and waiting."""


class EngineError(SandboxError):
    """The sandbox could not run the program; the message says what to fix."""


class EngineUnavailable(EngineError):
    """No engine answers."""


class ImageMissing(EngineError):
    """The sandbox image is not on the engine."""


def describe(exc: SandboxError) -> str:
    """The message a client is given for ``exc``: which branch it is, then what to change."""
    if isinstance(exc, EngineError):
        return f"the sandbox is unavailable: {exc}"
    if isinstance(exc, Busy):
        return str(exc)
    if isinstance(exc, RateLimited):
        return f"too many runs: {exc}"
    return f"refused: {exc}"


def describe_invalid(exc: ValidationError) -> str:
    """Pydantic's errors as one line naming each field."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "invalid arguments: " + "; ".join(problems)
