"""What a model gets back over MCP besides output: plots as images it can see, other files as
embedded resources, the last expression's value, and a summary within its budget."""

from __future__ import annotations

import base64
import re
import struct
import zlib
from collections.abc import AsyncIterator

import pytest
from mcp import Client
from mcp_types import EmbeddedResource, ImageContent, TextContent, TextResourceContents

from agent_sandbox.config import EngineSettings, ResultSettings, Settings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server import build_server

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(engine: DockerEngine) -> AsyncIterator[Client]:
    settings = Settings(engine=EngineSettings(pool_size=0, profiles=["minimal", "datascience"]))
    async with Client(build_server(Sandbox(settings, engine))) as connected:
        yield connected


def png_size(data: bytes) -> tuple[int, int]:
    """Decode a PNG's chunks (checking every CRC and inflating the image data); its size."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks, idat = 8, [], b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append(kind)
        idat += body if kind == b"IDAT" else b""
        offset += 12 + length
    assert chunks[0] == b"IHDR"
    assert chunks[-1] == b"IEND"
    width, height = struct.unpack(">II", data[16:24])
    assert len(zlib.decompress(idat)) > width * height  # every row, filter byte and pixels
    return width, height


PLOT = """
import matplotlib.pyplot as plt
import pandas as pd

frame = pd.DataFrame({"x": range(10), "y": [v * v for v in range(10)]})
frame.plot(x="x", y="y")
plt.show()
"""


async def test_a_plot_shown_in_the_datascience_profile_comes_back_as_an_image(client: Client) -> None:
    result = await client.call_tool("run_python", {"code": PLOT, "image": "datascience"})
    assert result.is_error is False
    images = [block for block in result.content if isinstance(block, ImageContent)]
    assert len(images) == 1
    assert images[0].mime_type == "image/png"
    width, height = png_size(base64.b64decode(images[0].data))
    assert width > 100
    assert height > 100
    structured = result.structured_content
    assert structured is not None
    assert [a["path"] for a in structured["artifacts"]] == ["figure_1.png"]
    assert "data" not in structured["artifacts"][0]  # bytes travel as content, never in JSON
    summary = result.content[0]
    assert isinstance(summary, TextContent)
    assert "figure_1.png" in summary.text
    assert "shown below" in summary.text


async def test_a_figure_saved_by_a_project_and_a_csv_come_back_as_image_and_resource(client: Client) -> None:
    main = (
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "plt.bar(['a', 'b'], [3, 5])\nplt.savefig('chart.png')\nopen('table.csv', 'w').write('k,v\\na,3\\n')\n"
    )
    arguments = {"files": [{"path": "main.py", "content": main}], "image": "datascience"}
    result = await client.call_tool("run_project", arguments)
    kinds = [type(block) for block in result.content]
    assert kinds == [TextContent, ImageContent, EmbeddedResource]
    image = result.content[1]
    assert isinstance(image, ImageContent)
    png_size(base64.b64decode(image.data))
    resource = result.content[2]
    assert isinstance(resource, EmbeddedResource)
    assert isinstance(resource.resource, TextResourceContents)
    assert str(resource.resource.uri) == "file:///work/table.csv"
    assert resource.resource.text == "k,v\na,3\n"


async def test_the_last_expression_and_the_error_come_back_over_mcp(client: Client) -> None:
    value = await client.call_tool("run_python", {"code": "print('printed')\n6 * 7"})
    assert value.structured_content is not None
    assert value.structured_content["return_value"] == "42"
    assert value.structured_content["stdout"] == "printed\n"
    off = await client.call_tool("run_python", {"code": "6 * 7", "return_last_expression": False})
    assert off.structured_content is not None
    assert off.structured_content["return_value"] is None
    failed = await client.call_tool("run_python", {"code": "def f():\n    return {}['k']\nf()"})
    assert failed.structured_content is not None
    assert failed.structured_content["error"]["type"] == "KeyError"
    assert failed.structured_content["error"]["line"] == 2
    summary = failed.content[0]
    assert isinstance(summary, TextContent)
    usage, error = summary.text.splitlines()[1:3]
    assert re.fullmatch(r"usage: \d+\.\d\d s CPU, \d+ MiB peak memory", usage), usage
    assert error == "error: KeyError: 'k' (/work/main.py line 2)"


async def test_five_mib_of_output_gives_a_summary_within_the_budget(client: Client) -> None:
    code = "import sys\nfor i in range(400_000):\n    sys.stdout.write(f'row {i:08d}\\n')\n"
    result = await client.call_tool("run_python", {"code": code})
    structured = result.structured_content
    assert structured is not None
    assert structured["stdout_bytes"] >= 5_000_000
    summary = result.content[0]
    assert isinstance(summary, TextContent)
    assert len(summary.text.encode()) <= ResultSettings().summary_kib * 1024
    assert "row 00000000" in summary.text
    assert "row 00399999" in summary.text
    assert "bytes cut here" in summary.text


async def test_terminal_controls_are_escaped_in_the_summary_and_exact_in_the_structured_result(
    client: Client,
) -> None:
    code = "print('\\x1b[2J\\x1b[H\\x1b[31mRED\\x1b[0m\\rX\\x07')"
    result = await client.call_tool("run_python", {"code": code})
    assert result.structured_content is not None
    assert result.structured_content["stdout"] == "\x1b[2J\x1b[H\x1b[31mRED\x1b[0m\rX\x07\n"
    summary = result.content[0]
    assert isinstance(summary, TextContent)
    assert "\\x1b[2J\\x1b[H\\x1b[31mRED\\x1b[0m\\rX\\x07" in summary.text
    assert not {"\x1b", "\r", "\x07"} & set(summary.text)


async def test_the_output_schema_describes_the_new_fields(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    schema = tools["run_python"].output_schema
    assert schema is not None
    assert {"artifacts", "return_value", "error"} <= set(schema["$defs"]["RunResult"]["properties"])
    assert "return_last_expression" in tools["run_python"].input_schema["properties"]
    assert "return_last_expression" not in tools["run_project"].input_schema["properties"]
