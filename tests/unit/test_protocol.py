"""The launcher protocol has two sides, engine/protocol.py on the host and engine/launcher.py in
the sandbox (self-contained, so it keeps copies): the copies must equal the host's."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from agent_sandbox.engine import protocol
from agent_sandbox.engine.protocol import (
    OMITTED_KINDS,
    ArtifactCaps,
    Dump,
    EndLine,
    FileCaps,
    InstallLine,
    Job,
    Manifest,
    ManifestEntry,
    MeasuredLine,
    NotebookJob,
    OmittedEntry,
    PostMortemLine,
    PreviewLine,
    SoFarLine,
    UsageLine,
    job_header,
)
from agent_sandbox.models import ArtifactPreview
from tests.unit.test_container_options import SPEC

TYPED = (
    Job,
    NotebookJob,
    FileCaps,
    ArtifactCaps,
    Manifest,
    ManifestEntry,
    PreviewLine,
    OmittedEntry,
    InstallLine,
    EndLine,
    UsageLine,
    MeasuredLine,
    SoFarLine,
    Dump,
    PostMortemLine,
)

LAUNCHER = ast.parse((Path(protocol.__file__).parent / "launcher.py").read_text())


def launcher_constants() -> dict[str, Any]:
    """The launcher's module-level constants that are literals."""
    found = {}
    for node in LAUNCHER.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return found


def launcher_typed_dicts() -> dict[str, set[str]]:
    """The keys of each TypedDict the launcher declares for type checking, inherited ones too."""
    classes: dict[str, ast.ClassDef] = {
        node.name: node for node in ast.walk(LAUNCHER) if isinstance(node, ast.ClassDef)
    }

    def keys(name: str) -> set[str]:
        node = classes[name]
        own = {
            item.target.id
            for item in node.body
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
        }
        inherited = {
            key
            for base in node.bases
            if isinstance(base, ast.Name) and base.id in classes
            for key in keys(base.id)
        }
        return own | inherited

    return {name: keys(name) for name in classes if name in {typed.__name__ for typed in TYPED}}


def test_the_launchers_line_prefixes_equal_the_hosts() -> None:
    constants = launcher_constants()
    for name in ("END_PREFIX", "INSTALLED_PREFIX", "FILES_PREFIX", "SNAPSHOT_PREFIX", "MEASURED_PREFIX"):
        assert constants[name] == getattr(protocol, name), name
    for name in ("MAX_PREVIEWS", "PREVIEW_BYTES", "PREVIEW_WAIT_S"):  # the host's bounds and deadline
        assert constants[name] == getattr(protocol, name), name


def test_the_job_and_the_reports_have_the_same_fields_on_both_sides() -> None:
    declared = launcher_typed_dicts()
    for typed in TYPED:
        assert declared[typed.__name__] == set(typed.__annotations__), typed.__name__
    written = json.loads(job_header(SPEC, nonce="n", install_nonce="i").partition(b"\n")[2])
    assert set(written) == set(Job.__annotations__)


def test_the_launcher_gives_only_the_reasons_the_host_knows() -> None:
    kinds = set()
    for node in ast.walk(LAUNCHER):
        if isinstance(node, ast.FunctionDef) and node.name == "_left_out":
            kinds |= {default.value for default in node.args.defaults if isinstance(default, ast.Constant)}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_left_out":
            kinds |= {arg.value for arg in node.args[3:] if isinstance(arg, ast.Constant)}
    assert kinds == OMITTED_KINDS


def test_the_end_report_carries_usage_measurements_and_the_post_mortem() -> None:
    line = json.dumps(
        {
            "exit_code": 137,
            "oom_kills": 0,
            "timed_out": True,
            "return_value": None,
            "usage": {"peak_memory_bytes": 2**20, "cpu_s": 1.5, "wall_s": 2.0, "source": "cgroup"},
            "measured": {
                "forks_refused": 2,
                "full": ["/tmp"],
                "at_file_size": ["/work/a"],
                "open_files_peak": 9,
                "tasks_peak": None,
            },
            "oom_victim": None,
            "post_mortem": {
                "dumps": [{"pid": 9, "program": True, "text": "x"}],
                "sources": {"/work/m.py:1": "y"},
            },
        }
    ).encode()
    report = protocol.end_report(line, line)
    assert report is not None
    assert report.usage == protocol.Usage(2**20, 1.5, 2.0, "cgroup")
    assert report.measured == protocol.Measured(2, ("/tmp",), ("/work/a",), 9, None)
    assert report.post_mortem == protocol.PostMortem(
        (protocol.ProcessDump(9, True, "x"),), {"/work/m.py:1": "y"}
    )


def test_an_end_report_with_broken_measurements_is_no_report() -> None:
    line = json.dumps(
        {"exit_code": 0, "oom_kills": 0, "timed_out": False, "return_value": None, "usage": {"cpu_s": "x"}}
    ).encode()
    assert protocol.end_report(line, line) is None


def test_a_manifest_keeps_only_the_previews_that_keep_to_the_rules() -> None:
    def entry(path: str, preview: Any) -> dict[str, Any]:
        return {"path": path, "size": 1, "preview": preview}

    good = {"csv": "a\n1\n", "rows": 7}
    files = [
        entry("a.parquet", good),
        entry("B.PARQUET", {"csv": "b\n2\n", "rows": 0}),
        entry("c.csv", good),  # only a Parquet file has one
        entry("d.parquet", {"csv": "x" * (protocol.PREVIEW_BYTES + 1), "rows": 1}),  # too long
        entry("e.parquet", {"csv": "a\n", "rows": True}),  # not a count
        entry("f.parquet", "a,b"),
        entry("g.parquet", None),
    ]
    line = json.dumps({"files": files, "omitted": [], "changed": 7, "refused": None}).encode()
    read = protocol._manifest(line, max_files=10, max_bytes=100)
    previews = {e.path: e.preview for e in read.files}
    assert previews == {
        "a.parquet": ArtifactPreview(csv="a\n1\n", rows=7),
        "B.PARQUET": ArtifactPreview(csv="b\n2\n", rows=0),
        "c.csv": None,
        "d.parquet": None,
        "e.parquet": None,
        "f.parquet": None,
        "g.parquet": None,
    }
    many = [entry(f"{n}.parquet", good) for n in range(protocol.MAX_PREVIEWS + 1)]
    line = json.dumps({"files": many, "omitted": [], "changed": len(many), "refused": None}).encode()
    read = protocol._manifest(line, max_files=10, max_bytes=100)
    assert len(read.files) == len(many)  # the files still come back, without a preview
    assert all(e.preview is None for e in read.files)
