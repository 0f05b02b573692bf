"""Background runs on disk: records readable by their owner only, lost runs, expiry, the cap on
stored runs, results that come back exactly, and files only the server's user may read."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent_sandbox.config import LimitSettings, RunSettings
from agent_sandbox.engine.launch import owner_id, owner_place
from agent_sandbox.errors import RunError
from agent_sandbox.live_output import OutputSoFar
from agent_sandbox.models import (
    Artifact,
    ErrorInfo,
    InstallReport,
    Limits,
    RunResult,
    Violation,
    ViolationKind,
    WorkspaceReport,
)
from agent_sandbox.run_store import LOST_NOTE, RunStore, _runner

LIMITS = Limits(**{name: getattr(LimitSettings(), name) for name in Limits.model_fields})
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
UNKNOWN = "A" * 22  # a well-formed id no run has


def store_in(tmp_path: Path, **settings: Any) -> RunStore:
    return RunStore(RunSettings(dir=str(tmp_path / "runs"), **settings))


def edit_meta(store: RunStore, run_id: str, **changes: object) -> None:
    path = store.root / run_id / "meta.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def meta_of(store: RunStore, run_id: str) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((store.root / run_id / "meta.json").read_text())
    return meta


def result(**fields: object) -> RunResult:
    base: dict[str, object] = {
        "exit_code": 0, "stdout": "", "stderr": "", "stdout_truncated": False, "stderr_truncated": False,
        "stdout_bytes": 0, "stderr_bytes": 0, "duration_s": 0.1, "timed_out": False, "oom_killed": False,
        "warm_start": False, "violations": [], "notes": [], "limits": LIMITS, "profile": "minimal",
    }  # fmt: skip
    return RunResult(**{**base, **fields})  # type: ignore[arg-type]


def finished(store: RunStore, owner: str = "a", ended: float | None = None) -> str:
    """A run of ``owner`` that has ended (at ``ended``, when given)."""
    run_id = store.create(owner, "run_python", 30.0).id
    store.save_result(run_id, result())
    if ended is not None:
        edit_meta(store, run_id, ended=ended)
    return run_id


def missing_message(store: RunStore, run_id: str, owner: str) -> str:
    with pytest.raises(RunError) as refused:
        store.get(run_id, owner)
    return str(refused.value)


def test_a_new_run_is_queued_for_its_owner_and_read_back_by_it(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    record = store.create("a", "run_project", 42.0)
    assert (record.owner, record.tool, record.state, record.timeout_s) == ("a", "run_project", "queued", 42.0)
    assert record.in_flight
    assert record.ended is None
    again = store.get(record.id, "a")
    assert (again.id, again.state, again.created) == (record.id, "queued", record.created)
    assert store.get(record.id, None).id == record.id  # the operator's command line reads any run


def test_another_owner_is_told_exactly_what_an_unknown_id_is_told(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    run_id = store.create("a", "run_python", 30.0).id
    theirs = missing_message(store, run_id, "b")
    unknown = missing_message(store, UNKNOWN, "b")
    assert theirs == unknown.replace(UNKNOWN, run_id)
    assert "there is no run" in theirs
    with pytest.raises(RunError):
        store.result(run_id, "b")
    with pytest.raises(RunError):
        store.ask_to_cancel(run_id, "b")
    assert not store.cancel_asked(run_id)


def test_runs_lists_the_owners_runs_newest_first(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    first = store.create("a", "run_python", 30.0).id
    edit_meta(store, first, created=time.time() - 10)
    second = store.create("a", "run_project", 30.0).id
    other = store.create("b", "run_python", 30.0).id
    assert [r.id for r in store.runs("a")] == [second, first]
    assert [r.id for r in store.runs("b")] == [other]
    assert {r.id for r in store.runs(None)} == {first, second, other}
    assert (store.in_flight("a"), store.in_flight(None)) == (2, 3)


def test_shared_runs_are_readable_by_any_owner(tmp_path: Path) -> None:
    store = store_in(tmp_path, shared=True)
    run_id = store.create("a", "run_python", 30.0).id
    store.save_result(run_id, result(stdout="hi\n"))
    assert store.get(run_id, "b").owner == "a"
    shared = store.result(run_id, "b")
    assert shared is not None
    assert shared.stdout == "hi\n"


def test_a_run_whose_runner_exited_is_lost_and_keeps_its_output(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    run_id = store.create("a", "run_python", 30.0).id
    store.mark(run_id, "running")
    printed = OutputSoFar("step 1\nstep 2\n", "warning\n", 14, 8, ("processes",))
    store.save_output(run_id, printed)
    with subprocess.Popen(["true"]) as child:
        identity = _runner(child.pid)  # unreaped until wait: its /proc entry is there
        assert not identity.endswith("@")
    edit_meta(store, run_id, runner=identity)  # that process has exited and been reaped
    record = store.get(run_id, "a")
    assert (record.state, record.error) == ("lost", LOST_NOTE)
    assert not record.in_flight
    assert record.ended is not None
    assert record.output == printed
    assert meta_of(store, run_id)["state"] == "lost"  # recorded, not only reported
    assert store.in_flight(None) == 0


@pytest.mark.parametrize(
    "runner",
    [
        # a pid that cannot exist
        f"{owner_place(owner_id())}:{int(Path('/proc/sys/kernel/pid_max').read_text()) + 1}@12345",
        f"{owner_id()}@1",  # a live pid, but another process's: its start time differs
    ],
)
def test_a_run_whose_runner_identity_names_no_live_process_is_lost(tmp_path: Path, runner: str) -> None:
    store = store_in(tmp_path)
    run_id = store.create("a", "run_python", 30.0).id
    edit_meta(store, run_id, runner=runner)
    assert store.get(run_id, "a").state == "lost"


def test_a_run_whose_runner_lives_stays_in_flight(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    run_id = store.create("a", "run_python", 30.0).id
    assert meta_of(store, run_id)["runner"] == _runner(os.getpid())
    assert store.get(run_id, "a").state == "queued"


@pytest.mark.parametrize(
    "runner",
    [
        "elsewhere/pidns:4026531836:1@7",  # another host's pid 1: this process cannot tell
        f"{owner_id().replace('/pidns:', '/pidns:9')}@7",  # another PID namespace of this host
        "12345:678",  # a record of another form
    ],
)
def test_a_run_whose_runner_this_process_cannot_judge_stays_in_flight(tmp_path: Path, runner: str) -> None:
    store = store_in(tmp_path)
    run_id = store.create("a", "run_python", 30.0).id
    edit_meta(store, run_id, runner=runner)
    assert store.get(run_id, "a").state == "queued"


def test_a_finished_run_older_than_the_ttl_is_removed_and_then_unknown(tmp_path: Path) -> None:
    store = store_in(tmp_path, result_ttl_s=60)
    old = finished(store, ended=time.time() - 61)
    recent = finished(store, ended=time.time() - 50)
    with pytest.raises(
        RunError, match=rf"there is no run '{old}' for this client: it ended more than 60 s ago"
    ):
        store.get(old, "a")
    assert not (store.root / old).exists()
    assert store.get(recent, "a").state == "finished"


def test_runs_in_flight_never_expire(tmp_path: Path) -> None:
    store = store_in(tmp_path, result_ttl_s=60)
    run_id = store.create("a", "run_python", 30.0).id
    edit_meta(store, run_id, created=time.time() - 3600)
    assert store.expire() == 0
    assert store.get(run_id, "a").state == "queued"


def test_past_max_stored_runs_the_oldest_finished_go_first_and_in_flight_ones_stay(tmp_path: Path) -> None:
    store = store_in(tmp_path, max_stored_runs=2)
    now = time.time()
    waiting = store.create("a", "run_python", 30.0).id
    edit_meta(store, waiting, created=now - 1000)  # the oldest of all, but in flight
    oldest = finished(store, ended=now - 30)
    middle = finished(store, ended=now - 20)
    newest = finished(store, ended=now - 10)
    assert store.expire() == 1
    assert {r.id for r in store.runs(None)} == {waiting, middle, newest}
    assert not (store.root / oldest).exists()


def test_a_stored_result_comes_back_exactly_with_its_files_bytes(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    stored = result(
        exit_code=1,
        stdout="héllo \x1b[31mred\x1b[0m\n\x00",
        stderr="Traceback ...\n",
        stdout_bytes=20,
        stderr_bytes=14,
        violations=[Violation(kind=ViolationKind.TIMEOUT, limit="30 s", message="stopped")],
        notes=["a note"],
        install=InstallReport(
            requirements=["six"],
            wheels=["six-1.16"],
            from_cache=True,
            resolve_s=0.0,
            install_s=0.5,
            ok=True,
            output="done",
        ),
        return_value="42",
        error=ErrorInfo(type="ValueError", message="no", file="main.py", line=3),
        artifacts=[
            Artifact(path="plot.png", size=len(PNG), mime_type="image/png", sha256="ab", data=PNG),
            Artifact(
                path="out.txt",
                size=3,
                mime_type="text/plain",
                sha256="cd",
                content="a\n\x00",
                data=b"a\n\x00",
            ),
            Artifact(path="empty.bin", size=0, mime_type="application/octet-stream", sha256="ef", data=b""),
            Artifact(
                path="big.bin", size=9, mime_type="application/octet-stream", sha256=None, omitted="cap"
            ),
        ],
        workspace=WorkspaceReport(id="w1", saved=True, files=2, bytes=10),
    )
    run_id = store.create("a", "run_python", 30.0).id
    assert store.result(run_id, "a") is None  # not ended yet
    store.save_result(run_id, stored)
    assert store.get(run_id, "a").state == "finished"
    back = store.result(run_id, "a")
    assert back == stored
    assert back is not None
    assert [a.data for a in back.artifacts] == [PNG, b"a\n\x00", b"", None]


def test_a_result_changed_on_disk_into_the_wrong_shape_is_a_clear_run_error(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    run_id = finished(store)
    path = store.root / run_id / "result.json"
    wrong: list[dict[str, object]] = [
        {"result": {"stdout": 1}},
        {"files": {}},
        {"result": result().model_dump(), "files": [1]},
    ]
    for garbage in wrong:
        path.write_text(json.dumps(garbage))
        with pytest.raises(RunError, match=f"the stored result of run {run_id} cannot be read"):
            store.result(run_id, "a")


@pytest.mark.parametrize("garbage", ["\x00\x01 not json", "[1, 2]"])
def test_a_result_changed_on_disk_into_garbage_is_a_clear_run_error(tmp_path: Path, garbage: str) -> None:
    store = store_in(tmp_path)
    run_id = finished(store)
    (store.root / run_id / "result.json").write_text(garbage)
    with pytest.raises(RunError, match="cannot be read"):
        store.result(run_id, "a")


def test_a_record_changed_on_disk_into_an_incomplete_one_is_ignored(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    kept = finished(store)
    broken = finished(store)
    (store.root / broken / "meta.json").write_text(json.dumps({"owner": "a", "state": "finished"}))
    assert [r.id for r in store.runs("a")] == [kept]
    store.create("a", "run_python", 30.0)


def test_files_are_private_to_the_servers_user(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    run_id = store.create("a", "run_python", 30.0).id
    store.save_output(run_id, OutputSoFar("x\n", "", 2, 0))
    store.ask_to_cancel(run_id, "a")
    store.save_result(
        run_id, result(artifacts=[Artifact(path="f", size=1, mime_type="x/y", sha256="s", data=b"1")])
    )
    folder = store.root / run_id

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(store.root) == 0o700
    assert mode(folder) == 0o700
    names = {path.name: mode(path) for path in folder.iterdir()}
    assert names == {"meta.json": 0o600, "output.json": 0o600, "result.json": 0o600, "cancel": 0o600}


@pytest.mark.parametrize("run_id", ["../" + "x" * 19, "x" * 21 + ".", "x" * 23, "", "../x"])
def test_an_id_that_is_not_22_url_safe_chars_is_refused_without_touching_its_path(
    tmp_path: Path, run_id: str
) -> None:
    store = store_in(tmp_path)
    store.root.mkdir()
    # What a path-following store would find: a run of this owner's, outside the store.
    target = (store.root / run_id).resolve()
    target.mkdir(parents=True, exist_ok=True)
    (target / "meta.json").write_text(json.dumps({"owner": "a", "state": "running", "created": 1.0}))
    with pytest.raises(RunError, match="there is no run"):
        store.get(run_id, "a")
    with pytest.raises(RunError, match="there is no run"):
        store.ask_to_cancel(run_id, "a")
    with pytest.raises(RunError, match="there is no run"):
        store.result(run_id, "a")
    assert sorted(path.name for path in target.iterdir()) == ["meta.json"]  # no cancel asked there


def test_a_cancel_is_asked_only_of_a_run_in_flight(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    waiting = store.create("a", "run_python", 30.0).id
    done = finished(store)
    assert store.ask_to_cancel(waiting, "a").state == "queued"
    store.ask_to_cancel(done, "a")
    assert (store.cancel_asked(waiting), store.cancel_asked(done)) == (True, False)
