"""How `agent-sandbox run` saves files and sums a run up for a person, without an engine."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from agent_sandbox.local_run import exit_code, save_files, status_line
from agent_sandbox.models import Artifact, InstallReport, Violation, ViolationKind
from tests.unit.test_results import result

TIMEOUT = Violation(kind=ViolationKind.TIMEOUT, limit="1 s", message="stopped after 1 s")


def artifact(path: str, data: bytes | None, omitted: str | None = None) -> Artifact:
    return Artifact(
        path=path,
        size=len(data or b""),
        mime_type="text/plain",
        sha256=hashlib.sha256(data or b"").hexdigest(),
        omitted=omitted,
        data=data,
    )


def test_files_are_saved_but_never_over_a_file_a_link_or_outside_the_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    (out / "taken").mkdir(parents=True)
    (out / "taken" / "kept.txt").write_text("mine")
    (out / "link.txt").symlink_to(tmp_path / "elsewhere.txt")
    (out / "blocker").write_text("a file where a folder would go")
    run = result(
        artifacts=[
            artifact("report/table.csv", b"a,b\n"),
            artifact("taken/kept.txt", b"theirs"),
            artifact("link.txt", b"through the link"),
            artifact("blocker/inner.txt", b"x"),
            artifact("big.bin", None, omitted="over max_artifact_kib"),
        ]
    )
    with caplog.at_level(logging.WARNING):
        saved = save_files(run, out)
    assert saved == [str(out / "report" / "table.csv")]
    assert (out / "report" / "table.csv").read_bytes() == b"a,b\n"
    assert (out / "taken" / "kept.txt").read_text() == "mine"
    assert not (tmp_path / "elsewhere.txt").exists()
    warnings = caplog.text
    assert "not saving taken/kept.txt: " in warnings
    assert "exists and is kept" in warnings
    assert "not saving link.txt" in warnings
    assert "not saving blocker/inner.txt" in warnings
    assert "not saving big.bin: over max_artifact_kib" in warnings


def test_the_status_line_says_how_it_ended_the_limits_and_the_files() -> None:
    files = [artifact("a.txt", b"a"), artifact("b.txt", b"b")]
    assert status_line(result(exit_code=0), [], None) == "[agent-sandbox] exit 0 in 0.10 s"
    measured = result(exit_code=0, cpu_s=0.081, peak_memory_mib=14.6)
    assert (
        status_line(measured, [], None) == "[agent-sandbox] exit 0 in 0.10 s (0.08 s CPU, 15 MiB peak memory)"
    )
    timed_out = result(exit_code=137, timed_out=True, violations=[TIMEOUT], notes=["It was stopped."])
    assert status_line(timed_out, [], None) == (
        "[agent-sandbox] timed out in 0.10 s; limits hit: timeout\n[agent-sandbox] It was stopped."
    )
    assert status_line(result(artifacts=files), [], None).endswith(
        "; 2 file(s) written (--out DIR saves them)"
    )
    assert status_line(result(artifacts=files), ["out/a.txt"], Path("out")).endswith(
        "; 1 of 2 file(s) saved to out: out/a.txt"
    )
    assert status_line(result(artifacts=files), [], Path("out")).endswith("; 0 of 2 file(s) saved to out")


def test_the_exit_code_is_the_programs_unless_a_limit_or_the_engine_says_otherwise() -> None:
    failed = InstallReport(
        requirements=["x"], wheels=[], from_cache=False, resolve_s=0, install_s=0, ok=False, output="no"
    )
    assert exit_code(result(exit_code=5), limit_code=4, engine_code=3) == 5
    assert exit_code(result(exit_code=0, violations=[TIMEOUT]), limit_code=4, engine_code=3) == 4
    assert exit_code(result(exit_code=137, violations=[TIMEOUT]), limit_code=4, engine_code=3) == 137
    assert exit_code(result(exit_code=None, install=failed), limit_code=4, engine_code=3) == 1
    assert exit_code(result(exit_code=None), limit_code=4, engine_code=3) == 3
