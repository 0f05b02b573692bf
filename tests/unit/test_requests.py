"""Request validation that needs no engine: limits, entrypoint, env, stdin."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from agent_sandbox.config import FileSettings, LimitSettings, Settings
from agent_sandbox.models import LimitRequest, ProjectFile, RunRequest
from agent_sandbox.sandbox import RequestError, Sandbox, resolve_limits

MAIN = ProjectFile(path="main.py", content="print(1)")


def test_without_a_request_the_configured_limits_apply() -> None:
    limits = resolve_limits(LimitRequest(), LimitSettings())
    assert limits.timeout_s == 30
    assert limits.memory_mib == 1024


def test_a_caller_may_lower_limits_and_raise_time_up_to_the_maximum() -> None:
    limits = resolve_limits(LimitRequest(timeout_s=120, memory_mib=128, cpus=0.5, pids=16), LimitSettings())
    assert (limits.timeout_s, limits.memory_mib, limits.cpus, limits.pids) == (120, 128, 0.5, 16)


@pytest.mark.parametrize(
    ("asked", "name"),
    [
        (LimitRequest(timeout_s=301), "timeout_s 301 is above the maximum of 300"),
        (LimitRequest(memory_mib=2048), "memory_mib 2048 is above the maximum of 1024"),
        (LimitRequest(cpus=2), "cpus 2 is above the maximum of 1"),
        (LimitRequest(pids=1000), "pids 1000 is above the maximum of 128"),
    ],
)
def test_a_limit_above_its_maximum_is_refused_by_name(asked: LimitRequest, name: str) -> None:
    with pytest.raises(RequestError, match=name):
        resolve_limits(asked, LimitSettings())


def sandbox() -> Sandbox:
    return Sandbox(Settings(files=FileSettings(max_stdin_kib=1)))


def test_the_entrypoint_must_be_one_of_the_files() -> None:
    with pytest.raises(RequestError, match=r"entrypoint 'app.py' is not one of the files sent \(main.py\)"):
        sandbox().prepare(RunRequest(files=[MAIN], entrypoint="app.py"))


def test_an_unsafe_entrypoint_is_refused() -> None:
    with pytest.raises(RequestError, match=r"entrypoint.*'\.\.'"):
        sandbox().prepare(RunRequest(files=[MAIN], entrypoint="../main.py"))


def test_stdin_over_its_limit_is_refused() -> None:
    with pytest.raises(RequestError, match="stdin is 1025 bytes, over the 1 KiB limit"):
        sandbox().prepare(RunRequest(files=[MAIN], stdin="x" * 1025))


def test_archive_refusals_surface_as_request_errors() -> None:
    with pytest.raises(RequestError, match="absolute paths"):
        sandbox().prepare(RunRequest(files=[ProjectFile(path="/main.py", content="")], entrypoint="/main.py"))


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"1BAD": "x"}, "'1BAD' is invalid"),
        ({"A-B": "x"}, "'A-B' is invalid"),
        ({"PATH": "/evil"}, "PATH is set by the sandbox"),
        ({"OK": "a\0b"}, "NUL"),
    ],
)
def test_invalid_environment_variables_are_refused(env: dict[str, str], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        RunRequest(files=[MAIN], env=env)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (
            {"args": ["x" * 200_000]},
            "args[0] is 200000 bytes, over the 131071 bytes Linux allows one argument",
        ),
        ({"env": {"BIG": "y" * 140_000}}, "env BIG is 140004 bytes, over the 131071 bytes"),
        ({"args": ["x" * 1000] * 1500}, "args and env add up to 1501500 bytes, over the 262144 bytes"),
        (
            {"args": ["a" * 100_000], "env": {"B": "b" * 100_000, "C": "c" * 100_000}},
            "add up to 300007 bytes",
        ),
    ],
)
def test_args_and_env_too_large_to_exec_are_refused_before_anything_runs(
    fields: dict[str, object], words: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(words)):
        RunRequest(files=[MAIN], **fields)  # type: ignore[arg-type]
    RunRequest(files=[MAIN], args=["x" * 131_071])  # exactly at the limit is fine


def test_an_empty_request_is_refused() -> None:
    with pytest.raises(ValidationError, match="files"):
        RunRequest(files=[])


def test_a_valid_request_becomes_a_spec() -> None:
    spec = sandbox().prepare(RunRequest(files=[MAIN], args=["a"], stdin="in", env={"K": "v"}))
    assert spec.entrypoint == "main.py"
    assert spec.args == ("a",)
    assert spec.stdin == b"in"
    assert spec.env == {"K": "v"}
    assert spec.image == "agent-sandbox:minimal"


def test_less_memory_shrinks_work_tmp_and_shm_so_they_still_fit_in_it() -> None:
    configured = LimitSettings()
    limits = resolve_limits(LimitRequest(memory_mib=256), configured)
    assert (limits.work_mib, limits.tmp_mib, limits.shm_mib) == (128, 32, 16)
    assert limits.work_mib + limits.tmp_mib + limits.shm_mib < limits.memory_mib
    same = resolve_limits(LimitRequest(memory_mib=configured.memory_mib), configured)
    assert (same.work_mib, same.tmp_mib, same.shm_mib) == (512, 128, 64)
