"""Image profiles on the real engine: the datascience stack works offline on both Pythons, the
3.13 profiles run 3.13's Python, and only the configured profiles can run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_sandbox.admission import Caller
from agent_sandbox.config import EngineSettings, PackageSettings, Settings, WorkspaceSettings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.images.profiles import get_profile
from agent_sandbox.models import ProjectFile, RunRequest
from agent_sandbox.sandbox import RequestError, Sandbox
from tests.helpers import snippet

pytestmark = pytest.mark.anyio

BOTH = EngineSettings(pool_size=0, profiles=["minimal", "datascience"])
EVERY = EngineSettings(pool_size=0, profiles=["minimal", "datascience", "minimal-3.13", "datascience-3.13"])
DATASCIENCE = ["datascience", "datascience-3.13"]

DATAFRAME_TO_PNG = """
import json
import matplotlib.pyplot as plt
import pandas as pd

frame = pd.DataFrame({"month": [1, 2, 3, 4], "sales": [10.0, 12.5, 9.0, 14.0]})
axes = frame.plot(x="month", y="sales", title="Sales")
plt.savefig("/work/sales.png")
with open("/work/sales.png", "rb") as png:
    header = png.read(8)
import os
print(json.dumps({"total": frame["sales"].sum(), "png": header.hex(),
                  "bytes": os.path.getsize("/work/sales.png"), "backend": plt.get_backend()}))
"""


@pytest.mark.parametrize("profile", DATASCIENCE)
async def test_datascience_builds_a_dataframe_and_saves_a_png(engine: DockerEngine, profile: str) -> None:
    sandbox = Sandbox(Settings(engine=EVERY), engine)
    result = await sandbox.run(snippet(DATAFRAME_TO_PNG, profile=profile))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # no font-cache or backend warnings for the model to puzzle over
    report = json.loads(result.stdout)
    assert report["total"] == 45.5
    assert report["png"] == "89504e470d0a1a0a"
    assert report["bytes"] > 5000
    assert report["backend"].lower() == "agg"
    assert result.profile == profile


@pytest.mark.parametrize("profile", DATASCIENCE)
async def test_datascience_has_every_package_its_description_lists(
    engine: DockerEngine, profile: str
) -> None:
    sandbox = Sandbox(Settings(engine=EVERY), engine)
    pins = dict(line.split("==") for line in get_profile(profile).packages())
    modules = (
        "numpy, pandas, scipy, matplotlib.pyplot, seaborn, sklearn, statsmodels.api, sympy, openpyxl, pyarrow"
    )
    code = (
        f"import json, sys, importlib.metadata as m\nimport {modules}\n"
        f"print(json.dumps([list(sys.version_info[:2]), {{n: m.version(n) for n in {list(pins)!r}}}]))"
    )
    result = await sandbox.run(snippet(code, profile=profile))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    python, versions = json.loads(result.stdout)
    assert ".".join(map(str, python)) == get_profile(profile).python
    assert versions == pins


PYTHON_313 = """
import sys
import tomllib

type Point = tuple[int, int]  # 3.12 syntax


def where(point: Point) -> str:
    match point:
        case (0, 0):
            return "origin"
        case (x, 0):
            return f"on the x axis at {x}"
        case _:
            return "elsewhere"


config = tomllib.loads('[tool]\\nname = "sandbox"\\n')
print(where((3, 0)), config["tool"]["name"], Point.__value__)
sys.version_info[:2]
"""


@pytest.mark.parametrize("notebook", [True, False], ids=["run_python", "run_project"])
async def test_minimal_313_runs_match_type_aliases_and_tomllib_on_313(
    engine: DockerEngine, notebook: bool
) -> None:
    sandbox = Sandbox(Settings(engine=EVERY), engine)
    request = snippet(PYTHON_313, profile="minimal-3.13", notebook=notebook, return_last_expression=notebook)
    result = await sandbox.run(request)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == "on the x axis at 3 sandbox tuple[int, int]\n"
    assert result.return_value == ("(3, 13)" if notebook else None)
    assert result.profile == "minimal-3.13"
    # The same code on 3.11 does not even compile: the profile is what decides.
    old = await sandbox.run(snippet(PYTHON_313, profile="minimal", notebook=notebook))
    assert old.exit_code == 1
    assert old.error is not None
    assert old.error.type == "SyntaxError"


async def test_a_313_run_reports_its_version_and_a_crash_as_on_311(engine: DockerEngine) -> None:
    """The launcher and the notebook runner (compiled from source there: the host's bytecode is
    3.11's) work the same on 3.13: version, exception report, exit code, stdin and output."""
    sandbox = Sandbox(Settings(engine=EVERY), engine)
    code = (
        "import sys\nprint(sys.version_info[:2], sys.stdin.read().upper())\n"
        "print('to stderr', file=sys.stderr)\n{}['missing']\n"
    )
    result = await sandbox.run(snippet(code, profile="minimal-3.13", stdin="hi", notebook=True))
    assert result.exit_code == 1
    assert result.stdout == "(3, 13) HI\n"
    assert result.stderr.startswith("to stderr\n")
    assert result.error is not None
    assert (result.error.type, result.error.line) == ("KeyError", 4)


async def test_a_workspace_keeps_data_across_pythons_and_code_for_its_own(
    engine: DockerEngine, tmp_path: Path
) -> None:
    """Bytecode is a Python version's own (a 3.11 function called on 3.13 crashes it): a cell on
    3.13 gets the data a 3.11 cell kept, not its functions, which stay for the next 3.11 cell."""
    settings = Settings(engine=EVERY, workspaces=WorkspaceSettings(dir=str(tmp_path)))
    sandbox = Sandbox(settings, engine)
    me = Caller("client-a")
    workspace = sandbox.workspaces.create(me.id).id

    def cell(code: str, profile: str) -> RunRequest:
        files = [ProjectFile(path="main.py", content=code)]
        return RunRequest(
            files=files, workspace=workspace, notebook=True, return_last_expression=True, profile=profile
        )

    first = await sandbox.run(
        cell("counter = 41\ndef bump():\n    return counter + 1\n", "minimal"), caller=me
    )
    assert first.exit_code == 0, first.stderr
    on_313 = await sandbox.run(
        cell("import sys\nprint(counter, 'bump' in globals())\nsys.version_info[:2]", "minimal-3.13"),
        caller=me,
    )
    assert on_313.exit_code == 0, on_313.stderr
    assert on_313.stdout == "41 False\n"
    assert on_313.return_value == "(3, 13)"
    assert on_313.state is not None
    (why,) = [entry.why for entry in on_313.state.not_restored if entry.name == "bump"]
    assert why.startswith("its code is Python 3.11's, which this Python cannot run")
    assert any("image='minimal' to get them back" in note for note in on_313.notes)
    back = await sandbox.run(cell("bump()", "minimal"), caller=me)
    assert back.exit_code == 0, back.stderr
    assert back.return_value == "42"


async def test_datascience_writes_and_reads_parquet(engine: DockerEngine) -> None:
    """pyarrow is in the image: df.to_parquet, which a workspace's notes suggest for a frame too
    large to keep as Python state, works, and the file comes back."""
    sandbox = Sandbox(Settings(engine=BOTH), engine)
    code = (
        "import pandas as pd\n"
        "pd.DataFrame({'x': [1, 2, 3], 'y': ['a', 'b', 'c']}).to_parquet('frame.parquet')\n"
        "back = pd.read_parquet('frame.parquet')\n"
        "print(back.x.sum(), ''.join(back.y))\n"
    )
    result = await sandbox.run(snippet(code, profile="datascience"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "6 abc\n"
    (parquet,) = result.artifacts
    assert parquet.path == "frame.parquet"
    assert (parquet.data or b"").startswith(b"PAR1")
    assert parquet.preview is not None  # the run viewer's first rows, made in the sandbox
    assert parquet.preview.rows == 3
    assert parquet.preview.csv == "x,y\n1,a\n2,b\n3,c\n"


async def test_a_parquet_file_without_a_reader_or_unreadable_comes_back_without_a_preview(
    engine: DockerEngine,
) -> None:
    sandbox = Sandbox(Settings(engine=BOTH), engine)
    code = "open('broken.parquet', 'wb').write(b'PAR1 not really')"
    for profile in ("minimal", "datascience"):  # no pyarrow; pyarrow that cannot read it
        result = await sandbox.run(snippet(code, profile=profile))
        assert result.exit_code == 0, result.stderr
        (broken,) = result.artifacts
        assert broken.data == b"PAR1 not really"
        assert broken.preview is None


async def test_minimal_has_no_third_party_packages(engine: DockerEngine) -> None:
    # Auto-install off: it would fetch numpy and run the call again (test_missing_packages.py).
    sandbox = Sandbox(Settings(engine=BOTH, packages=PackageSettings(auto_install=False)), engine)
    result = await sandbox.run(snippet("import numpy"))
    assert result.exit_code == 1
    assert "No module named 'numpy'" in result.stderr
    assert result.profile == "minimal"


async def test_a_profile_the_server_does_not_offer_is_refused(engine: DockerEngine) -> None:
    sandbox = Sandbox(Settings(engine=EngineSettings(pool_size=0)), engine)
    with pytest.raises(
        RequestError, match="image profile 'datascience' is not offered here; use one of minimal"
    ):
        await sandbox.run(snippet("pass", profile="datascience"))
    with pytest.raises(RequestError, match="image profile 'gpu' is not offered here"):
        await sandbox.run(snippet("pass", profile="gpu"))


async def test_requirements_add_to_a_profile(engine: DockerEngine) -> None:
    sandbox = Sandbox(Settings(engine=BOTH), engine)
    code = "import six, pandas; print(six.__name__, pandas.__name__)"
    result = await sandbox.run(snippet(code, profile="datascience", requirements=["six"]))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "six pandas\n"


async def test_each_plt_show_in_a_cell_saves_its_own_figure(engine: DockerEngine) -> None:
    sandbox = Sandbox(Settings(engine=BOTH), engine)
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\nplt.plot([2, 1])\nplt.show()\n"
    request = snippet(code, profile="datascience", notebook=True, return_last_expression=True)
    result = await sandbox.run(request)
    assert result.exit_code == 0, result.stderr
    assert [a.path for a in result.artifacts] == ["figure_1.png", "figure_2.png"]
    assert all(a.mime_type == "image/png" for a in result.artifacts)
    assert result.artifacts[0].sha256 != result.artifacts[1].sha256
    assert "FigureCanvasAgg is non-interactive" not in result.stderr
