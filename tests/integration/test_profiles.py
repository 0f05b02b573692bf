"""Image profiles on the real engine: the datascience stack works offline, and only the
configured profiles can run."""

from __future__ import annotations

import json

import pytest

from agent_sandbox.config import EngineSettings, PackageSettings, Settings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.images.profiles import get_profile
from agent_sandbox.sandbox import RequestError, Sandbox
from tests.helpers import snippet

pytestmark = pytest.mark.anyio

BOTH = EngineSettings(pool_size=0, profiles=["minimal", "datascience"])

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


async def test_datascience_builds_a_dataframe_and_saves_a_png(engine: DockerEngine) -> None:
    sandbox = Sandbox(Settings(engine=BOTH), engine)
    result = await sandbox.run(snippet(DATAFRAME_TO_PNG, profile="datascience"))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # no font-cache or backend warnings for the model to puzzle over
    report = json.loads(result.stdout)
    assert report["total"] == 45.5
    assert report["png"] == "89504e470d0a1a0a"
    assert report["bytes"] > 5000
    assert report["backend"].lower() == "agg"
    assert result.profile == "datascience"


async def test_datascience_has_every_package_its_description_lists(engine: DockerEngine) -> None:
    sandbox = Sandbox(Settings(engine=BOTH), engine)
    pins = dict(line.split("==") for line in get_profile("datascience").packages())
    code = f"import json, importlib.metadata as m; print(json.dumps({{n: m.version(n) for n in {list(pins)!r}}}))"
    result = await sandbox.run(snippet(code, profile="datascience"))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == pins


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
