"""Where a program was when its time ran out, from the stacks its processes dumped. Pure.

At the time limit the launcher asks every Python process of the run for the stacks of all its
threads (faulthandler, on SIGURG) and hands them back before the kill: see engine/launcher.py.
faulthandler writes each thread as ``Thread 0x... (most recent call first):`` (or ``Current
thread``) and then one ``  File "PATH", line N in FUNCTION`` line per frame, innermost first.
"""

from __future__ import annotations

import re

from agent_sandbox.engine.spec import PostMortem, ProcessDump
from agent_sandbox.models import StoppedAt

_THREAD = re.compile(r"^(?:Current thread|Thread) 0x[0-9a-fA-F]{1,16} \(most recent call first\):$")
_FRAME = re.compile(r'^  File "(?P<file>[^"]{1,1024})", line (?P<line>[0-9]{1,9}) in (?P<function>.{1,500})$')
_USER_CODE = "/work/"
MAX_DUMP_CHARS = 16 * 1024
# The dumps come from the program's own processes, which could write anything there: what reaches
# the result and its notes is one line of text, controls and undecodable bytes escaped.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\udc80-\udcff]")

Frame = tuple[str, int, str]  # file, line, function


def stopped_at(post_mortem: PostMortem | None) -> StoppedAt | None:
    """The place, if any process answered: the innermost frame in the program's own files, of the
    first thread that was running the program's own code (not waiting in a library for a child or
    another thread), the program's main thread first, then its children's; failing that, the
    innermost own frame of any thread; failing that, the innermost frame at all."""
    if post_mortem is None or not post_mortem.dumps:
        return None
    threads = [(dump, frames) for dump in post_mortem.dumps for frames in _threads(dump.text)]
    busy = [(dump, frames[0]) for dump, frames in threads if frames and _own(frames[0])]
    waiting = [(dump, own[0]) for dump, frames in threads if (own := [f for f in frames if _own(f)])]
    anywhere = [(dump, frames[0]) for dump, frames in threads if frames]
    candidates: list[tuple[ProcessDump, Frame | None]] = [
        *busy,
        *waiting,
        *anywhere,
        (post_mortem.dumps[0], None),
    ]
    dump, frame = candidates[0]
    file, line, function = frame if frame else (None, None, None)
    source = post_mortem.sources.get(f"{file}:{line}") if frame else None
    return StoppedAt(
        process="program" if dump.program else "child",
        pid=dump.pid,
        file=_printable(file),
        line=line,
        function=_printable(function),
        source=_printable(source) or None,
        dump=_joined(post_mortem.dumps),
    )


def _printable(text: str | None) -> str | None:
    if text is None:
        return None
    return _UNPRINTABLE.sub(lambda char: f"\\x{ord(char[0]) & 0xFF:02x}", text)


def _threads(text: str) -> list[list[Frame]]:
    """Each thread's frames, innermost first; the main thread first (faulthandler lists the
    newest thread first and the main thread, the oldest, last)."""
    threads: list[list[Frame]] = []
    for line in text.splitlines():
        if _THREAD.match(line):
            threads.append([])
        elif (frame := _FRAME.match(line)) and threads:
            threads[-1].append((frame["file"], int(frame["line"]), frame["function"]))
    return threads[::-1]


def _own(frame: Frame) -> bool:
    return frame[0].startswith(_USER_CODE)


def _joined(dumps: tuple[ProcessDump, ...]) -> str:
    parts = [
        f"process {d.pid} ({'the program' if d.program else 'a child'}):\n{d.text.rstrip()}" for d in dumps
    ]
    text = "\n".join(_printable(line) or "" for line in "\n\n".join(parts).splitlines())
    if len(text) > MAX_DUMP_CHARS:
        text = text[: MAX_DUMP_CHARS - 40] + "\n[... the rest of the dump cut here ...]"
    return text
