"""The MCP tools that manage workspaces: create one, list and read its files, clear its Python
state, delete it. Runs use a workspace through the ``workspace`` argument of ``run_python`` and
``run_project``."""

# No `from __future__ import annotations`: the SDK evaluates the tools' annotations.
import base64
from collections.abc import Callable
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from pydantic import Field

from agent_sandbox.errors import WorkspaceError
from agent_sandbox.filenames import name_from_shown, shown_name
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server.tool_table import add_tools

ClientOf = Callable[[Context], str]
MAX_READ_BYTES = 1024 * 1024
_ID_FIELD = Field(description="A workspace id from workspace_create.")


def add_workspace_tools(server: MCPServer, sandbox: Sandbox, client_of: ClientOf) -> None:
    """Register the workspace tools on ``server``; each acts for the calling client only."""
    settings = sandbox.settings.workspaces

    def answer(summary: str, data: dict[str, Any]) -> CallToolResult:
        return CallToolResult(content=[TextContent(type="text", text=summary)], structured_content=data)

    def refused(exc: Exception) -> ToolError:
        return ToolError(f"refused: {exc}")

    async def workspace_create(ctx: Context) -> CallToolResult:
        try:
            info = await sandbox.create_workspace(client_of(ctx))
        except WorkspaceError as exc:
            raise refused(exc) from None
        return answer(
            f"workspace {info.id} created; pass workspace={info.id!r} to run_python or run_project",
            {"workspace": info.id, "idle_ttl_s": settings.idle_ttl_s, "max_kib": settings.max_kib},
        )

    async def workspace_files(workspace: Annotated[str, _ID_FIELD], ctx: Context) -> CallToolResult:
        try:
            info = await sandbox.describe_workspace(workspace, client_of(ctx))
        except WorkspaceError as exc:
            raise refused(exc) from None
        files = [{"path": shown_name(path), "size": size} for path, size in sorted(info.files.items())]
        listing = "\n".join(f"  {entry['path']} ({entry['size']} bytes)" for entry in files) or "  (empty)"
        total = sum(info.files.values())
        state = None
        names = "none"
        if info.state_profile is not None:
            state = {
                "names": list(info.state_names),
                "bytes": info.state_bytes,
                "profile": info.state_profile,
            }
            names = f"{', '.join(info.state_names) or 'no names'} ({info.state_bytes} bytes)"
        return answer(
            f"workspace {workspace}: {len(files)} files, {total} bytes\n{listing}\nPython state: {names}",
            {"workspace": workspace, "files": files, "bytes": total, "state": state},
        )

    async def workspace_read(
        workspace: Annotated[str, _ID_FIELD],
        path: Annotated[
            str,
            Field(
                description="A file's path in the workspace as workspace_files lists it, e.g. "
                "'src/app.py' (a byte that is not UTF-8 is listed as \\xHH, a backslash as \\\\)."
            ),
        ],
        ctx: Context,
    ) -> CallToolResult:
        try:
            name = name_from_shown(path)
            data = await sandbox.read_workspace_file(workspace, client_of(ctx), name)
        except (ValueError, WorkspaceError) as exc:  # a malformed name, or the workspace's refusal
            raise refused(exc) from None
        if len(data) > MAX_READ_BYTES:
            raise ToolError(
                f"refused: {path!r} is {len(data)} bytes; workspace_read returns at most "
                f"{MAX_READ_BYTES // 1024} KiB. Run a program in the workspace that prints the part you need"
            )
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(data).decode(), "base64"
        return answer(text, {"path": path, "size": len(data), "encoding": encoding, "content": text})

    async def workspace_reset_state(workspace: Annotated[str, _ID_FIELD], ctx: Context) -> CallToolResult:
        try:
            await sandbox.reset_workspace_state(workspace, client_of(ctx))
        except WorkspaceError as exc:
            raise refused(exc) from None
        return answer(
            f"workspace {workspace}: Python state cleared (its files stay); the next cell starts afresh",
            {"workspace": workspace, "state": None},
        )

    async def workspace_delete(workspace: Annotated[str, _ID_FIELD], ctx: Context) -> CallToolResult:
        try:
            await sandbox.delete_workspace(workspace, client_of(ctx))
        except WorkspaceError as exc:
            raise refused(exc) from None
        return answer(f"workspace {workspace} deleted", {"workspace": workspace, "deleted": True})

    names = (
        " and run_python's global names (variables, functions, classes, imports; pickled inside the sandbox)"
        if settings.max_state_kib
        else ""
    )
    keep = (
        f"A workspace keeps /work between runs (up to {settings.max_kib} KiB, dropped after "
        f"{settings.idle_ttl_s:g} s unused){names}; every run still gets a fresh container."
    )
    add_tools(
        server,
        [
            (workspace_create, "Create a workspace", "Create a workspace and return its id. " + keep, False),
            (
                workspace_files,
                "List a workspace",
                "List the files in a workspace, with sizes, and the names its Python state keeps.",
                True,
            ),
            (
                workspace_read,
                "Read a workspace file",
                "Read one file of a workspace (UTF-8 text or base64).",
                True,
            ),
            (
                workspace_reset_state,
                "Clear a workspace's Python state",
                "Forget the global names run_python cells kept in a workspace; its files stay.",
                False,
            ),
            (workspace_delete, "Delete a workspace", "Delete a workspace and its files.", False),
        ],
        [workspace_reset_state, workspace_delete],
    )
