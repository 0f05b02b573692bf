"""Registering a family of small tools (the workspace tools, the background-run tools) from one
table: each with its title and description, read-only or not, and those that destroy."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

# The tool's function, its title, its description, and whether it only reads.
ToolEntry = tuple[Callable[..., Any], str, str, bool]


def add_tools(
    server: MCPServer,
    entries: Sequence[ToolEntry],
    destructive: Sequence[Callable[..., Any]],
    meta: Mapping[Callable[..., Any], dict[str, Any]] | None = None,
) -> None:
    """Register every tool of ``entries`` on ``server``: closed world, idempotent when it only
    reads, destructive only for those in ``destructive``; with its ``_meta`` from ``meta``."""
    for tool, title, description, read_only in entries:
        server.add_tool(
            tool,
            title=title,
            description=description,
            meta=(meta or {}).get(tool),
            annotations=ToolAnnotations(
                read_only_hint=read_only,
                destructive_hint=tool in destructive,
                idempotent_hint=read_only,
                open_world_hint=False,
            ),
        )
