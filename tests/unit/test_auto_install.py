"""Auto-install's logic on a scripted engine (the real engine and index are
tests/integration/test_missing_packages.py's): one retry at most, the first result kept when the
retry cannot run, and a module the run's own files provide never installed."""

from __future__ import annotations

from typing import Any

import pytest
from packaging.requirements import Requirement

from agent_sandbox.config import EngineSettings, Settings
from agent_sandbox.engine.base import Stage
from agent_sandbox.errors import EngineError
from agent_sandbox.models import ProjectFile, RunRequest
from agent_sandbox.packages.resolver import Resolution
from agent_sandbox.sandbox import Sandbox
from tests.scripted_engine import ScriptedEngine, outcome

pytestmark = pytest.mark.anyio


def missing(module: str) -> Any:
    """A run that died on ``import module``, as Python reports it."""
    return outcome(
        exit_code=1,
        stderr=b'Traceback (most recent call last):\n  File "/work/main.py", line 1, in <module>\n'
        + f"    import {module}\nModuleNotFoundError: No module named '{module}'\n".encode(),
    )


MISSING = missing("yaml")


def sandbox_of(engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    sandbox = Sandbox(Settings(engine=EngineSettings(pool_size=0)), engine)  # type: ignore[arg-type]
    resolved: list[list[str]] = []

    async def resolve(requirements: list[Requirement], profile: str) -> Resolution:
        resolved.append([str(requirement) for requirement in requirements])
        return Resolution(tuple(map(str, requirements)), (), False, 0.0)  # no wheel to mount

    monkeypatch.setattr(sandbox, "_resolve", resolve)
    sandbox.resolved = resolved  # type: ignore[attr-defined]
    return sandbox


def request(*files: tuple[str, str]) -> RunRequest:
    return RunRequest(
        files=[ProjectFile(path=path, content=code) for path, code in files]
        or [ProjectFile(path="main.py", content="import yaml")]
    )


async def test_the_call_runs_once_more_with_the_package_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ScriptedEngine(MISSING, outcome(stdout=b"loaded\n"))
    sandbox = sandbox_of(engine, monkeypatch)
    stages: list[tuple[Stage, str]] = []

    async def progress(stage: Stage, detail: str = "") -> None:
        stages.append((stage, detail))

    result = await sandbox.run(request(), on_progress=progress)
    assert result.stdout == "loaded\n"
    assert result.install is not None
    assert result.install.auto
    assert result.install.added == ["pyyaml"]
    assert sandbox.resolved == [["pyyaml"]]  # type: ignore[attr-defined]
    assert len(engine.specs) == 2
    assert ("resolving", "no module named 'yaml': installing 'pyyaml', running again") in stages
    assert "installed 'pyyaml'" in result.notes[-1]


async def test_a_retry_that_still_misses_a_module_is_not_retried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = ScriptedEngine(MISSING, missing("bs4"))
    result = await sandbox_of(engine, monkeypatch).run(request())
    assert len(engine.specs) == 2
    assert result.install is not None
    assert result.install.auto
    assert "requirements=['beautifulsoup4']" in result.notes[-1]  # named, not installed


async def test_when_the_retry_cannot_run_the_first_result_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ScriptedEngine(MISSING, EngineError("the engine went away"))
    result = await sandbox_of(engine, monkeypatch).run(request())
    assert result.exit_code == 1
    assert result.install is None
    assert "requirements=['pyyaml']" in result.notes[-2]
    assert result.notes[-1] == (
        "The server tried to install 'pyyaml' and run the call again, and could not: the engine went away"
    )


@pytest.mark.parametrize(
    ("files", "retried"),
    [
        ([("src/main.py", "import yaml"), ("yaml.py", "")], False),  # a module of its own, misplaced
        ([("src/main.py", "import yaml"), ("lib/yaml/__init__.py", "")], False),  # a package of its own
        ([("main.py", "import yaml"), ("data/yaml/config.yml", "a: 1")], True),  # data, not a package
    ],
)
async def test_a_module_the_runs_own_files_provide_is_never_installed(
    monkeypatch: pytest.MonkeyPatch, files: list[tuple[str, str]], retried: bool
) -> None:
    engine = ScriptedEngine(MISSING, outcome())
    entrypoint: dict[str, Any] = {"entrypoint": files[0][0]}
    await sandbox_of(engine, monkeypatch).run(request(*files).model_copy(update=entrypoint))
    assert len(engine.specs) == (2 if retried else 1)
