"""What a tool call returns as MCP content: the summary, images a multimodal model can see, and
the other files as embedded resources. The full result is the structured content. For a client
that renders MCP Apps, the run viewer's Parquet previews ride in the result's ``_meta``:
metadata the app receives, not content the model reads (docs/viewer.md)."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from mcp_types import (
    BlobResourceContents,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    TextContent,
    TextResourceContents,
)

from agent_sandbox.artifacts import IMAGE_TYPES
from agent_sandbox.config import ResultSettings
from agent_sandbox.models import Artifact, BatchResult, RunResult
from agent_sandbox.server.summary import summarise

# The result's ``_meta`` key for the viewer's tables: {path: {"csv": first rows, "rows": all rows}}.
TABLES_META = "io.agent-sandbox/tables"


def tool_result(result: RunResult, settings: ResultSettings, apps: bool = False) -> CallToolResult:
    """A run's result as a tool call returns it: the content a model reads, all of it structured;
    for a client with MCP Apps (``apps``), the Parquet previews for the run viewer in ``_meta``."""
    return CallToolResult(
        _meta=viewer_meta(result) if apps else None,
        content=tool_content(result, settings),
        structured_content=result.model_dump(mode="json"),
    )


def viewer_meta(result: RunResult) -> dict[str, Any] | None:
    """The Parquet files' first rows, as CSV made in the sandbox; None when there are none."""
    tables = {a.path: a.preview.model_dump() for a in result.artifacts if a.preview is not None}
    return {TABLES_META: tables} if tables else None


def tool_content(result: RunResult, settings: ResultSettings) -> list[ContentBlock]:
    """The summary first, then up to ``max_images`` images, then every other file that came back
    (images over the limits too) as an embedded resource."""
    images = [a for a in result.artifacts if _showable_image(a, settings)][: settings.max_images]
    blocks: list[ContentBlock] = [
        TextContent(
            type="text",
            text=summarise(result, settings.summary_kib * 1024, frozenset(a.path for a in images)),
        )
    ]
    blocks += [
        ImageContent(type="image", data=base64.b64encode(a.data or b"").decode(), mime_type=a.mime_type)
        for a in images
    ]
    shown = {a.path for a in images}
    blocks += [_resource(a) for a in result.artifacts if a.data is not None and a.path not in shown]
    return blocks


def batch_summary(answer: BatchResult, line_chars: int = 160) -> str:
    """A batch for a model to read: the counts, then a line per item (how it ended, the limits
    it hit, and its error, or the last line it printed); the structured content has all of it."""
    lines = [answer.summary]
    for entry in answer.results:
        result = entry.result
        if result is None:
            lines.append(f"[{entry.index}] did not run: {entry.error}")
            continue
        status = "timed out" if result.timed_out else f"exit {result.exit_code}"
        line = f"[{entry.index}] {status} in {result.duration_s:.2f} s"
        if result.violations:
            line += "; limits hit: " + ", ".join(v.kind.value for v in result.violations)
        shown = (
            f"{result.error.type}: {result.error.message}"
            if result.error
            else (result.stdout or result.stderr).strip()
        )
        if shown:
            line += ": " + shown.splitlines()[-1]
        lines.append(line[:line_chars])
    return "\n".join(lines)


def _showable_image(artifact: Artifact, settings: ResultSettings) -> bool:
    return (
        artifact.data is not None
        and artifact.mime_type in IMAGE_TYPES
        and artifact.size <= settings.max_image_kib * 1024
    )


def _resource(artifact: Artifact) -> EmbeddedResource:
    uri = "file:///work/" + quote(artifact.path)
    text = artifact.content
    if text is None and artifact.data is not None:
        try:
            text = artifact.data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is not None:
        return EmbeddedResource(
            type="resource", resource=TextResourceContents(uri=uri, mime_type=artifact.mime_type, text=text)
        )
    blob = base64.b64encode(artifact.data or b"").decode()
    return EmbeddedResource(
        type="resource", resource=BlobResourceContents(uri=uri, mime_type=artifact.mime_type, blob=blob)
    )
