"""The exception a program died on, read from the traceback in its stderr. Pure."""

from __future__ import annotations

import re

from agent_sandbox.models import ErrorInfo

_HEADER = "Traceback (most recent call last):"
_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+)(?:, in (?P<function>.+))?$')
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?:: (?P<message>.*))?$")
_USER_CODE = "/work/"
_MAX_MESSAGE = 500
_MAX_MESSAGE_LINES = 5  # later lines may be atexit output rather than the message


def parse_error(stderr: str) -> ErrorInfo | None:
    """The last uncaught exception in ``stderr``: its type, message, and where it was raised in
    the program's own files (the innermost frame under /work, else the innermost frame).

    Handles chained exceptions (the last one is the one that ended the program) and syntax errors,
    whose position line has no function name.
    """
    lines = stderr.splitlines()
    start = max((i for i, line in enumerate(lines) if line == _HEADER), default=None)
    if start is None:  # a syntax error in the file run has no header, only its position
        positions = [i for i, line in enumerate(lines) if (m := _FRAME.match(line)) and not m["function"]]
        if not positions:
            return None
        start = positions[-1] - 1
    frames: list[tuple[str, int, str | None, str | None]] = []
    for index in range(start + 1, len(lines)):
        line = lines[index]
        frame = _FRAME.match(line)
        if frame:
            following = lines[index + 1] if index + 1 < len(lines) else ""
            code = following.strip() if following.startswith("    ") and following.strip() else None
            frames.append((frame["file"], int(frame["line"]), frame["function"], code))
            continue
        if line.startswith(" ") or not line:
            continue
        exception = _EXCEPTION.match(line)
        if exception is None or not frames:
            return None
        message = "\n".join([exception["message"] or "", *_continuation(lines, index + 1)]).strip()
        mine = [frame for frame in frames if frame[0].startswith(_USER_CODE)] or frames
        file, line_number, function, source = mine[-1]
        return ErrorInfo(
            type=exception["type"],
            message=message[:_MAX_MESSAGE],
            file=file,
            line=line_number,
            function=function,
            source=source,
        )
    return None


def _continuation(lines: list[str], start: int) -> list[str]:
    """Lines of a multi-line exception message, up to the next traceback or blank line."""
    more = []
    for line in lines[start:]:
        if not line or line == _HEADER or line.startswith("During handling") or line.startswith("The above"):
            break
        more.append(line)
    return more[: _MAX_MESSAGE_LINES - 1]
