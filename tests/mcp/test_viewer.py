"""The run viewer (an MCP App) as a host shows it: three real runs through the server, for a
client that negotiated MCP Apps; the viewer read with resources/read, loaded in Debian's headless
Chromium (`make chromium`) in a sandboxed iframe of a small host page, which plays the host side
with the official AppBridge of @modelcontextprotocol/ext-apps (`make mcp-clients`) and delivers
each result over the postMessage bridge. The screenshots go to the test's tmp_path; with
AGENT_SANDBOX_UPDATE_SCREENSHOTS=1 they also replace the pictures docs/viewer.md shows."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.extension import advertise
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from mcp_types import CallToolResult, TextResourceContents
from playwright.async_api import Browser, FrameLocator, Page, Route, async_playwright

from agent_sandbox.config import EngineSettings, Settings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server import build_server
from agent_sandbox.server.content import TABLES_META
from agent_sandbox.server.viewer import VIEWER_URI

from .conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
NODE_BIN = ROOT / ".tools" / "conformance" / "node_modules" / ".bin"
CLIENTS = ROOT / ".tools" / "mcp-clients"
DOCS = ROOT / "docs"
UPDATE_SCREENSHOTS = os.environ.get("AGENT_SANDBOX_UPDATE_SCREENSHOTS") == "1"
HOST = "http://host.test/"
# The host page: the viewer in an iframe sandboxed as hosts do (scripts, no same origin), wired to
# an AppBridge that answers ui/initialize, then sends the tool's input and result.
HOST_PAGE = """<!DOCTYPE html>
<html><body style="margin:0;background:#fff">
<iframe id="app" sandbox="allow-scripts" style="border:0;width:900px;height:200px;display:block"></iframe>
<script type="module">
import { AppBridge, PostMessageTransport } from "./bridge.js";
window.show = async (html, args, result) => {
  const iframe = document.getElementById("app");
  const bridge = new AppBridge(null, { name: "viewer-test-host", version: "1" }, {},
                               { hostContext: { theme: "light", displayMode: "inline" } });
  bridge.onsizechange = ({ height }) => { iframe.style.height = height + "px"; };
  bridge.oninitialized = async () => {
    await bridge.sendToolInput({ arguments: args });
    await bridge.sendToolResult(result);
  };
  await bridge.connect(new PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
  iframe.srcdoc = html;
};
</script></body></html>"""

FAILING = """\
def crunch(numbers):
    total = 0
    while True:
        total += sum(numbers)

print("crunching", flush=True)
crunch(range(1000))
"""
CHART = """\
import matplotlib.pyplot as plt

xs = list(range(50))
plt.plot(xs, [x * x for x in xs], label="x squared")
plt.plot(xs, [40 * x for x in xs], label="40 x")
plt.legend()
plt.title("Two curves")
plt.show()
"""
CITIES = [("Lyon", 522), ("Paris", 2103), ("Nice", 342), ("Lille", 236), ("Brest", 139), ("Metz", 120)]
READINGS = 250  # rows of the Parquet file: more than the 200 its preview holds
TABLE = f"""\
import csv

import pandas as pd

with open("cities.csv", "w", newline="") as out:
    writer = csv.writer(out)
    writer.writerow(["city", "population_k"])
    writer.writerows({CITIES!r})
readings = pd.DataFrame({{"sensor": [f"s{{n % 7}}" for n in range({READINGS})],
                          "reading": [round((n * 37 % 101) / 10, 1) for n in range({READINGS})]}})
readings.to_parquet("readings.parquet")
with open("summary.json", "w") as out:
    out.write('{{"cities": {len(CITIES)}}}')
print("wrote", {len(CITIES)}, "cities and", len(readings), "readings")
"""

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def bridge_js(tmp_path_factory: pytest.TempPathFactory) -> str:
    """ext-apps' AppBridge as one browser module (rolldown resolves its SDK and zod imports)."""
    rolldown = CLIENTS / "node_modules" / ".bin" / "rolldown"
    if not rolldown.exists() or not (NODE_BIN / "node").exists():
        pytest.fail("the MCP clients are not installed: run `make mcp-clients`")
    entry = CLIENTS / "viewer-test-bridge.mjs"  # inside the folder, so its node_modules resolve
    out = tmp_path_factory.mktemp("bridge") / "bridge.js"
    entry.write_text(
        'export { AppBridge, PostMessageTransport } from "@modelcontextprotocol/ext-apps/app-bridge";\n'
    )
    try:
        subprocess.run(
            [str(rolldown), entry.name, "--platform", "browser", "--format", "esm", "-o", str(out)],
            cwd=CLIENTS,
            env={**os.environ, "PATH": f"{NODE_BIN}{os.pathsep}{os.environ['PATH']}"},
            check=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        entry.unlink()
    return out.read_text()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless: Playwright downloads no browser of its own."""
    if not CHROMIUM.exists():
        pytest.fail("no /usr/bin/chromium: run `make chromium`")
    async with async_playwright() as playwright:
        # As root (CI is) Chromium refuses its own sandbox; the page it loads is the test's own.
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
async def client(engine: DockerEngine) -> AsyncIterator[Client]:
    """A client that negotiated MCP Apps, on the real engine (cold starts: the pool is not under test)."""
    sandbox = Sandbox(
        Settings(engine=EngineSettings(pool_size=0, profiles=["minimal", "datascience"])), engine
    )
    apps = advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})
    async with Client(build_server(sandbox), extensions=[apps]) as connected:
        yield connected


def wire(result: CallToolResult) -> dict[str, Any]:
    """The result as the host received it (camelCase, as JSON-RPC carries it)."""
    wired: dict[str, Any] = json.loads(result.model_dump_json(by_alias=True, exclude_none=True))
    return wired


async def show(
    browser: Browser, bridge: str, html: str, args: dict[str, Any], result: CallToolResult
) -> Page:
    """The host page (served from memory) with the viewer showing ``result``, once it has."""
    page = await browser.new_page(viewport={"width": 900, "height": 600})

    async def serve(route: Route) -> None:
        body, kind = (
            (bridge, "text/javascript")
            if route.request.url.endswith("bridge.js")
            else (HOST_PAGE, "text/html")
        )
        await route.fulfill(body=body, content_type=kind)

    await page.route(HOST + "**", serve)
    await page.goto(HOST + "host.html")
    await page.evaluate(
        "([html, args, result]) => window.show(html, args, result)", [html, args, wire(result)]
    )
    await view(page).locator("#status").wait_for()
    return page


def view(page: Page) -> FrameLocator:
    return page.frame_locator("#app")


async def screenshot(page: Page, name: str, folder: Path) -> None:
    """The viewer as the host shows it, at the height it asked for (ui/notifications/size-changed),
    as a PNG in ``folder``; in docs/ too when AGENT_SANDBOX_UPDATE_SCREENSHOTS=1."""
    await page.wait_for_function("() => document.getElementById('app').offsetHeight > 200", polling=50)
    height = await page.locator("#app").evaluate("app => app.offsetHeight")
    await page.set_viewport_size({"width": 900, "height": max(600, height)})  # all of it painted
    picture = await page.locator("#app").screenshot(path=folder / name)
    assert picture.startswith(b"\x89PNG\r\n\x1a\n")
    assert (folder / name).stat().st_size > 10_000  # a page of text, not a blank frame
    if UPDATE_SCREENSHOTS:
        (DOCS / name).write_bytes(picture)


async def test_the_viewer_shows_a_failing_run_a_chart_and_a_table(
    client: Client, bridge_js: str, browser: Browser, tmp_path: Path
) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert tools["run_python"].meta == {"ui": {"resourceUri": VIEWER_URI}}
    assert tools["run_project"].meta == {"ui": {"resourceUri": VIEWER_URI}}
    (resource,) = (await client.read_resource(VIEWER_URI)).contents
    assert isinstance(resource, TextResourceContents)
    assert resource.mime_type == APP_MIME_TYPE
    html = resource.text
    assert "http://" not in html
    assert "https://" not in html  # self-contained: nothing to fetch

    failing_args = {"code": FAILING, "timeout_s": 2}
    failing = await client.call_tool("run_python", failing_args)
    chart_args = {"code": CHART, "image": "datascience"}
    chart = await client.call_tool("run_python", chart_args)
    table_args = {"files": [{"path": "main.py", "content": TABLE}], "image": "datascience"}
    table = await client.call_tool("run_project", table_args)
    for result in (failing, chart, table):
        assert result.is_error is False
    failed = failing.structured_content
    assert failed is not None
    assert failed["timed_out"]
    assert failed["stopped_at"] is not None

    page = await show(browser, bridge_js, html, failing_args, failing)
    frame = view(page)
    assert (await frame.locator("#status").inner_text()).startswith("Timed out")
    assert await frame.locator(".violation").count() == len(failed["violations"])
    notes = frame.locator(".note")
    assert await notes.all_inner_texts() == failed["notes"]
    assert re.search(r"main\.py:\d+ in crunch", await frame.locator("#stopped-at").inner_text())
    assert "crunching" in await frame.locator("#stdout").inner_text()
    await frame.locator("#search").fill("crunch")
    assert await frame.locator("#stdout mark").count() == 1
    await frame.locator("#search").fill("")
    await frame.locator("#search").blur()
    await screenshot(page, "viewer-failing.png", tmp_path)
    await page.close()

    page = await show(browser, bridge_js, html, chart_args, chart)
    frame = view(page)
    assert await frame.locator("#status").inner_text() == "Succeeded: exit code 0"
    image = frame.locator("img.artifact-image")
    assert await image.count() == 1
    size = await image.evaluate(
        "i => i.decode().then(() => [i.naturalWidth, i.naturalHeight, i.width, i.height])"
    )
    assert size[0] > 0
    assert size[:2] == size[2:]  # shown at full size
    await screenshot(page, "viewer-chart.png", tmp_path)
    await page.close()

    # The Parquet file's first rows ride in _meta, for the view only: the model reads no more.
    tables = (table.meta or {})[TABLES_META]
    assert list(tables) == ["readings.parquet"]
    assert tables["readings.parquet"]["rows"] == READINGS
    assert tables["readings.parquet"]["csv"].startswith("sensor,reading\ns0,0.0\ns1,3.7\n")
    model_reads = table.model_dump_json(exclude={"meta"})
    assert "s1,3.7" not in model_reads
    assert "preview" not in json.dumps(table.structured_content)

    page = await show(browser, bridge_js, html, table_args, table)
    frame = view(page)
    rows = frame.locator("table.data[data-path='cities.csv'] tbody tr")
    assert await rows.count() == len(CITIES)
    assert await rows.first.locator("td").first.inner_text() == CITIES[0][0]
    population = frame.locator("table.data[data-path='cities.csv'] th button", has_text="population_k")
    await population.click()
    assert await rows.first.locator("td").first.inner_text() == "Metz"  # ascending, as numbers
    await population.click()
    assert await rows.first.locator("td").first.inner_text() == "Paris"  # then descending
    await population.click()  # ascending again for the picture
    readings = frame.locator("table.data[data-path='readings.parquet']")
    shown = readings.locator("tbody tr")
    assert await shown.count() == 200  # the preview's rows, of the 250
    caption = frame.locator("figcaption", has_text="readings.parquet")
    assert await caption.inner_text() == "readings.parquet · Parquet, 250 rows (the first 200 shown, as CSV)"
    assert await shown.first.locator("td").all_inner_texts() == ["s0", "0.0"]
    await readings.locator("th button", has_text="reading").click()
    await readings.locator("th button", has_text="reading").click()  # descending, as numbers
    assert await shown.first.locator("td").nth(1).inner_text() == "10.0"
    summary = next(a for a in table.structured_content["artifacts"] if a["path"] == "summary.json")  # type: ignore[index]
    listed = frame.locator("#files tbody tr")
    assert await listed.count() == 1  # the other files: path, size and hash
    assert "summary.json" in await listed.inner_text()
    assert await listed.locator("code[title]").get_attribute("title") == summary["sha256"]
    await screenshot(page, "viewer-table.png", tmp_path)
    await page.close()
