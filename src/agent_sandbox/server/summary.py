"""A run's result as the compact text a model reads first; the full data goes in structuredContent.

The text stays within a byte budget whatever the program printed: long output keeps its first
and last lines, with a line saying how much was cut and where the rest is (never silently).
"""

from __future__ import annotations

from agent_sandbox.models import RunResult

_CUT = "[... {lines} lines, {size} bytes cut here; {where} in the structured result has what was kept ...]\n"
_MARKER_ROOM = 160
_HEAD_SHARE = 2 / 3


def summarise(result: RunResult, budget_bytes: int, shown_images: frozenset[str] = frozenset()) -> str:
    """Status, error, value, output, limits, notes and files (saying which images are shown as
    pictures), in the order a model needs them, in at most ``budget_bytes`` of UTF-8."""
    before = [f"status: {_status(result)}"]
    if result.error is not None:
        error = result.error
        before.append(f"error: {error.type}: {error.message} ({error.file} line {error.line})")
    if result.return_value is not None:
        before.append(f"return value: {result.return_value}")
    if (install := result.install) is not None:
        source = "host cache" if install.from_cache else f"downloaded in {install.resolve_s:.2f} s"
        state = "installed" if install.ok else "FAILED to install; the program did not run"
        before.append(
            f"requirements: {', '.join(install.requirements)} -> {len(install.wheels)} wheel(s) "
            f"({source}), {state} in {install.install_s:.2f} s"
        )
        if not install.ok and install.output:
            before += ["--- installer output ---", install.output.rstrip("\n")[-2000:]]
    after = [f"limit hit: {v.kind.value} ({v.limit}): {v.message}" for v in result.violations]
    after += [f"note: {note}" for note in result.notes]
    after += _files(result, shown_images)

    fixed = "\n".join(before + after)
    room = max(0, budget_bytes - _size(fixed) - 2 * _MARKER_ROOM)
    streams = [(name, text) for name, text in (("stdout", result.stdout), ("stderr", result.stderr)) if text]
    shares = _share(room, [_size(text) for _, text in streams])
    middle = []
    for (name, text), share in zip(streams, shares, strict=True):
        middle += [f"--- {name} ---", _head_and_tail(text, share, name).rstrip("\n")]
        if (result.stdout_truncated, result.stderr_truncated)[name == "stderr"]:
            total = result.stderr_bytes if name == "stderr" else result.stdout_bytes
            middle.append(f"[{name}: {total} bytes were written; the sandbox kept its start and end]")
    text = "\n".join(before + middle + after)
    if _size(text) > budget_bytes:  # only when the fixed parts alone are too long
        text = (
            text.encode()[: budget_bytes - _MARKER_ROOM].decode(errors="ignore") + "\n[... summary cut ...]"
        )
    return text


def _status(result: RunResult) -> str:
    if result.timed_out:
        return f"timed out after {result.duration_s:.2f} s"
    if result.exit_code is None:
        return f"exit code unknown after {result.duration_s:.2f} s"
    return f"exit code {result.exit_code} in {result.duration_s:.2f} s"


def _files(result: RunResult, shown_images: frozenset[str]) -> list[str]:
    if not result.artifacts:
        return []
    lines = [f"files created or changed under /work ({len(result.artifacts)} listed):"]
    for artifact in result.artifacts:
        detail = f"{artifact.size} bytes, {artifact.mime_type}"
        if artifact.omitted:
            detail += f", left out: {artifact.omitted}"
        elif artifact.mime_type.startswith("image/"):
            detail += ", shown below" if artifact.path in shown_images else ", not shown (image limits)"
        lines.append(f"  {_one_line(artifact.path)} ({detail})")
    return lines


def _one_line(name: str) -> str:
    """A name the program chose, with control characters escaped: it cannot start a line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def _share(room: int, sizes: list[int]) -> list[int]:
    """Split ``room`` between streams: each gets what it needs, up to an equal share, and what
    a small one leaves over goes to the others."""
    shares = [0] * len(sizes)
    remaining, open_ = room, sorted(range(len(sizes)), key=lambda i: sizes[i])
    while open_:
        equal = remaining // len(open_)
        index = open_.pop(0)
        shares[index] = min(sizes[index], equal)
        remaining -= shares[index]
    return shares


def _head_and_tail(text: str, budget: int, where: str) -> str:
    """``text`` if it fits in ``budget`` bytes, else its first and last lines with a cut marker."""
    if _size(text) <= budget:
        return text
    lines = text.splitlines(keepends=True)
    head_room = int(budget * _HEAD_SHARE)
    head: list[str] = []
    used = 0
    for line in lines:
        if used + _size(line) > head_room:
            break
        head.append(line)
        used += _size(line)
    tail: list[str] = []
    used = 0
    for line in reversed(lines[len(head) :]):
        if used + _size(line) > budget - head_room:
            break
        tail.insert(0, line)
        used += _size(line)
    if not head and not tail:  # one enormous line: cut inside it
        head = [text.encode()[:head_room].decode(errors="ignore")]
        tail = [text.encode()[-(budget - head_room) :].decode(errors="ignore")] if budget > head_room else []
        cut_lines = max(0, text.count("\n") - "".join(head + tail).count("\n"))
    else:
        cut_lines = len(lines) - len(head) - len(tail)
    cut_bytes = _size(text) - _size("".join(head + tail))
    kept_head = "".join(head)
    if kept_head and not kept_head.endswith("\n"):
        kept_head += "\n"
    return kept_head + _CUT.format(lines=cut_lines, size=cut_bytes, where=where) + "".join(tail)


def _size(text: str) -> int:
    return len(text.encode())
