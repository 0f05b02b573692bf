"""The run viewer, an MCP App: ``run_python``, ``run_project`` and ``run_result`` name a ``ui://``
resource, a self-contained HTML page that hosts with MCP Apps render beside the call and fill with
its result. It reads what every client already gets (the content and the structured content) and,
for Parquet files, the first rows the sandbox wrote as CSV, which only a client with Apps gets, in
the result's ``_meta`` (server/content.py): a client without Apps, and the model, read exactly
what they read without it (docs/viewer.md)."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from mcp.server.apps import Apps

VIEWER_URI = "ui://agent-sandbox/run-viewer.html"
# The tools' ``_meta``: which resource a host renders for a call.
TOOL_META: dict[str, Any] = {"ui": {"resourceUri": VIEWER_URI}}


def viewer_html() -> str:
    """The app itself: one HTML file shipped as package data, no build step."""
    return files("agent_sandbox.server").joinpath("run_viewer.html").read_text("utf-8")


def viewer_extension() -> Apps:
    """The Apps extension serving the viewer: it advertises the capability and the resource."""
    apps = Apps()
    apps.add_html_resource(
        VIEWER_URI,
        viewer_html(),
        name="run-viewer",
        title="Run viewer",
        description="A run's status, limits hit and notes, its output with search, its images, "
        "its CSV/TSV files and the first rows of its Parquet files as sortable tables and its other "
        "files with sizes and hashes.",
        prefers_border=True,
    )
    return apps
