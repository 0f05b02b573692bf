"""A run's result as the compact text a model reads first; the full data goes in structuredContent."""

from __future__ import annotations

from agent_sandbox.models import RunResult


def summarise(result: RunResult) -> str:
    """Status, output and notes, in the order a model needs them."""
    if result.timed_out:
        status = f"timed out after {result.duration_s:.2f} s"
    elif result.exit_code is None:
        status = f"exit code unknown after {result.duration_s:.2f} s"
    else:
        status = f"exit code {result.exit_code} in {result.duration_s:.2f} s"
    lines = [f"status: {status}"]
    if (install := result.install) is not None:
        source = "host cache" if install.from_cache else f"downloaded in {install.resolve_s:.2f} s"
        state = "installed" if install.ok else "FAILED to install; the program did not run"
        lines.append(
            f"requirements: {', '.join(install.requirements)} -> {len(install.wheels)} wheel(s) "
            f"({source}), {state} in {install.install_s:.2f} s"
        )
        if not install.ok and install.output:
            lines += ["--- installer output ---", install.output.rstrip("\n")]
    for name, text, truncated, total in (
        ("stdout", result.stdout, result.stdout_truncated, result.stdout_bytes),
        ("stderr", result.stderr, result.stderr_truncated, result.stderr_bytes),
    ):
        if not text:
            continue
        lines.append(f"--- {name} ---")
        lines.append(text.rstrip("\n"))
        if truncated:
            lines.append(f"[{name} cut: only the first {len(text.encode())} of {total} bytes are kept]")
    for violation in result.violations:
        lines.append(f"limit hit: {violation.kind.value} ({violation.limit}): {violation.message}")
    lines.extend(f"note: {note}" for note in result.notes)
    return "\n".join(lines)
