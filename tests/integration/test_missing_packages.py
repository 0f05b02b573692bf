"""A run that dies on ModuleNotFoundError, on the real engine and the host's real package index:
the note names the package, and with packages.auto_install the call runs once more with it,
from the same files and state; never a package the policy refuses, never the sandbox's network."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_sandbox.admission import Caller
from agent_sandbox.config import EngineSettings, PackageSettings, Settings, WorkspaceSettings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.models import ProjectFile, RunRequest
from agent_sandbox.sandbox import Sandbox
from tests.helpers import snippet

pytestmark = pytest.mark.anyio

SKLEARN = "import sklearn\nfrom sklearn.linear_model import LinearRegression\nprint('fitted', round(LinearRegression().fit([[0], [1]], [0, 2]).coef_[0], 6))"
BOTH_PROFILES = EngineSettings(pool_size=0, profiles=["minimal", "datascience"])


def make(engine: DockerEngine, tmp_path: Path, **packages: object) -> Sandbox:
    settings = Settings(
        engine=BOTH_PROFILES,
        packages=PackageSettings(**packages),  # type: ignore[arg-type]
        workspaces=WorkspaceSettings(dir=str(tmp_path / "workspaces")),
    )
    return Sandbox(settings, engine)


async def test_a_missing_module_is_installed_and_the_call_run_once_more(
    engine: DockerEngine, tmp_path: Path
) -> None:
    """With the host's shared wheel cache (the datascience image's build fills it), as a server has it."""
    result = await make(engine, tmp_path).run(snippet(SKLEARN, notebook=True))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "fitted 2.0\n"  # the program's real output, from the second run
    assert result.error is None
    install = result.install
    assert install is not None
    assert install.auto
    assert install.added == ["scikit-learn"]
    assert install.ok
    assert any(wheel.startswith("scikit_learn-") for wheel in install.wheels)
    assert any(
        "no module named 'sklearn'" in note
        and "installed 'scikit-learn'" in note
        and "requirements=['scikit-learn']" in note
        for note in result.notes
    )


async def test_with_auto_install_off_the_note_names_the_package_the_argument_and_the_profile(
    engine: DockerEngine, tmp_path: Path
) -> None:
    result = await make(engine, tmp_path, auto_install=False).run(snippet(SKLEARN, notebook=True))
    assert result.exit_code == 1
    assert result.install is None
    assert result.error is not None
    assert result.error.type == "ModuleNotFoundError"
    note = result.notes[-1]
    assert "'sklearn'" in note
    assert "requirements=['scikit-learn']" in note
    assert "image='datascience'" in note


async def test_a_denied_package_is_never_fetched(engine: DockerEngine, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    sandbox = make(engine, tmp_path, cache_dir=str(cache), deny=["scikit-learn"])
    result = await sandbox.run(snippet(SKLEARN, notebook=True))
    assert result.exit_code == 1
    assert result.install is None
    assert "denied by this server's policy" in result.notes[-1]
    assert "image='datascience'" in result.notes[-1]
    assert not cache.exists() or not any(cache.rglob("*.whl"))  # nothing was downloaded


async def test_a_workspace_cell_reruns_from_the_state_before_the_failed_run(
    engine: DockerEngine, tmp_path: Path
) -> None:
    """The failed run's files and names are not kept: nothing it did is applied twice."""
    sandbox = make(engine, tmp_path, cache_dir=str(tmp_path / "cache"))
    me = Caller("client-a")
    workspace = sandbox.workspaces.create(me.id).id

    def cell(code: str) -> RunRequest:
        return RunRequest(
            files=[ProjectFile(path="main.py", content=code)], workspace=workspace, notebook=True
        )

    await sandbox.run(cell("counter = 1"), caller=me)
    code = (
        "counter += 1\nopen('log.txt', 'a').write('ran ')\nimport six\nprint(counter, open('log.txt').read())"
    )
    result = await sandbox.run(cell(code), caller=me)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "2 ran \n"
    assert result.install is not None
    assert result.install.auto
    assert result.install.added == ["six"]
    assert sandbox.workspaces.read(workspace, me.id, "log.txt") == b"ran "
    # six was installed for that call only: a later one is told how to get it back.
    later = await sandbox.run(cell("print(counter)"), caller=me)
    assert later.stdout == "2\n"
    assert any("could not restore six" in note and "requirements=['six']" in note for note in later.notes)
    again = await sandbox.run(
        cell("print(counter, six.__name__)").model_copy(update={"requirements": ["six"]}), caller=me
    )
    assert again.stdout == "2 six\n"


async def test_a_module_the_runs_own_files_provide_is_never_installed(
    engine: DockerEngine, tmp_path: Path
) -> None:
    """src/main.py cannot import helpers.py from /work (sys.path is src/): a place problem, not a package."""
    request = RunRequest(
        files=[
            ProjectFile(path="src/main.py", content="import helpers"),
            ProjectFile(path="helpers.py", content="VALUE = 1"),
        ],
        entrypoint="src/main.py",
    )
    result = await make(engine, tmp_path, cache_dir=str(tmp_path / "cache")).run(request)
    assert result.exit_code == 1
    assert result.install is None
    assert not any("requirements=" in note for note in result.notes)
