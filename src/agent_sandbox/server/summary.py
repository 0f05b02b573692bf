"""A run's result as the compact text a model reads first; the full data goes in structuredContent.

The text stays within a byte budget whatever the program printed: long output keeps its first
and last lines, with a line saying how much was cut and where the rest is (never silently).
"""

from __future__ import annotations

from collections.abc import Callable

from agent_sandbox.models import RunResult

_CUT = "[... {lines} lines, {size} bytes cut here; {where} in the structured result has what was kept ...]\n"
# Terminal controls (C0 but newline and tab, DEL, C1) in the program's output, shown escaped so
# that no escape sequence, carriage return or bell reaches whatever displays the summary.
_CONTROLS = {
    code: "\\r" if code == 0x0D else f"\\x{code:02x}"
    for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))
    if chr(code) not in "\n\t"
}
_HEAD_SHARE = 2 / 3
_MAX_FILE_LINES = 30


def summarise(result: RunResult, budget_bytes: int, shown_images: frozenset[str] = frozenset()) -> str:
    """Status, error, value, output, limits, notes and files (saying which images are shown as
    pictures), in the order a model needs them, in at most ``budget_bytes`` of UTF-8.

    Every line made from something the program chose (a value, an exception, a file name) is
    escaped onto one line and cut to an eighth of the budget; the output gets what is left, with
    its terminal controls escaped (``structuredContent`` keeps it exact).
    """
    line_cap = max(80, budget_bytes // 8)

    def line(text: str) -> str:
        return _clip(_one_line(text), line_cap)

    before = [f"status: {_status(result)}"]
    if (usage := _usage(result)) is not None:
        before.append(usage)
    if (error := result.error) is not None:
        before.append(line(f"error: {error.type}: {error.message} ({error.file} line {error.line})"))
    if (workspace := result.workspace) is not None:
        state = "saved" if workspace.saved else "NOT saved (see notes)"
        before.append(f"workspace: {workspace.id} {state}: {workspace.files} files, {workspace.bytes} bytes")
    if (kept := result.state) is not None:
        names = ", ".join(kept.kept[:20]) + (", ..." if len(kept.kept) > 20 else "") or "no names"
        saved = "kept" if kept.saved else "NOT saved (see notes); the next call has"
        before.append(line(f"python state: {saved} {kept.kept_count} names ({names}), {kept.bytes} bytes"))
    if result.return_value is not None:
        before.append(line(f"return value: {result.return_value}"))
    if (install := result.install) is not None:
        source = "host cache" if install.from_cache else f"downloaded in {install.resolve_s:.2f} s"
        state = "installed" if install.ok else "FAILED to install; the program did not run"
        state += " (added by the server after a missing module; see notes)" if install.auto else ""
        before.append(
            line(
                f"requirements: {', '.join(install.requirements)} -> {len(install.wheels)} wheel(s) "
                f"({source}), {state} in {install.install_s:.2f} s"
            )
        )
        if not install.ok and install.output:
            output = install.output.translate(_CONTROLS)
            before += ["--- installer output ---", _head_and_tail(output, line_cap, "install.output")]
    after = [line(f"limit hit: {v.kind.value} ({v.limit}): {v.message}") for v in result.violations]
    after += [line(f"note: {note}") for note in result.notes]
    after += _files(result, shown_images, line)

    streams = [
        (name, text.translate(_CONTROLS))
        for name, text in (("stdout", result.stdout), ("stderr", result.stderr))
        if text
    ]
    room = budget_bytes - _size("\n".join(before + after))
    while True:
        text = "\n".join(before + _output(result, streams, max(0, room)) + after)
        excess = _size(text) - budget_bytes
        if excess <= 0 or room <= 0:
            break
        room -= excess + 32  # the headers and cut lines took more than guessed: shrink and redo
    if excess > 0:  # the fixed lines alone are over: keep the start, say so
        text = (
            _clip(text, budget_bytes - 64) + "\n[... summary cut; the structured result has everything ...]"
        )
    return text


def escape_controls(text: str) -> str:
    """The program's text with its terminal controls escaped, as the summary shows output."""
    return text.translate(_CONTROLS)


def _output(result: RunResult, streams: list[tuple[str, str]], room: int) -> list[str]:
    """Each stream under its header, sharing ``room`` bytes, headers and cut lines included."""
    parts = []
    for name, text in streams:
        truncated = result.stderr_truncated if name == "stderr" else result.stdout_truncated
        total = result.stderr_bytes if name == "stderr" else result.stdout_bytes
        note = (
            f"[{name}: {total} bytes were written; the sandbox kept its start and end]" if truncated else ""
        )
        parts.append((name, text, note, _size(f"--- {name} ---\n\n{note}\n")))
    shares = _share(room, [_size(text) + overhead for _, text, _, overhead in parts])
    lines = []
    for (name, text, note, overhead), share in zip(parts, shares, strict=True):
        lines += [f"--- {name} ---", _head_and_tail(text, max(0, share - overhead), name).rstrip("\n")]
        lines += [note] if note else []
    return lines


def _status(result: RunResult) -> str:
    if result.timed_out:
        return f"timed out after {result.duration_s:.2f} s"
    if result.exit_code is None:
        return f"exit code unknown after {result.duration_s:.2f} s"
    return f"exit code {result.exit_code} in {result.duration_s:.2f} s"


def _usage(result: RunResult) -> str | None:
    """One short line: CPU time and peak memory (of the largest process alone, under gVisor)."""
    parts = []
    if result.cpu_s is not None:
        parts.append(f"{result.cpu_s:.2f} s CPU")
    if result.peak_memory_mib is not None:
        whose = " (largest process)" if result.usage_source == "processes" else ""
        parts.append(f"{result.peak_memory_mib:.0f} MiB peak memory{whose}")
    return "usage: " + ", ".join(parts) if parts else None


def _files(result: RunResult, shown_images: frozenset[str], line: Callable[[str], str]) -> list[str]:
    if not result.artifacts:
        return []
    lines = [f"files created or changed under /work ({len(result.artifacts)} listed):"]
    for artifact in result.artifacts[:_MAX_FILE_LINES]:
        detail = f"{artifact.size} bytes, {artifact.mime_type}"
        if artifact.omitted:
            detail += f", left out: {artifact.omitted}"
        elif artifact.path in shown_images:
            detail += ", shown below"
        elif artifact.mime_type.startswith("image/"):
            detail += ", attached as a file (over the image limits)"
        lines.append(line(f"  {artifact.path} ({detail})"))
    if len(result.artifacts) > _MAX_FILE_LINES:
        lines.append(f"  ... and {len(result.artifacts) - _MAX_FILE_LINES} more (see artifacts)")
    return lines


def _clip(text: str, max_bytes: int) -> str:
    if _size(text) <= max_bytes:
        return text
    return text.encode()[: max(0, max_bytes - 3)].decode(errors="ignore") + "..."


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
