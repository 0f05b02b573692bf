"""Who is calling: the client a tool call comes from, for fair shares, workspaces and the audit
log, and the share of the server it gets."""

from __future__ import annotations

from typing import Any, Literal

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context

from agent_sandbox.admission import Caller, Share
from agent_sandbox.server.transports import Transport

# What a server is reached over: a transport, or a client in the same process (tests, embedding).
Channel = Transport | Literal["in-process"]


def client_of(ctx: Context, channel: Channel) -> str:
    """The calling client of a tool call; see ``client_of_request``."""
    return client_of_request(ctx.request_context, channel)


def client_of_request(context: ServerRequestContext[Any, Any], channel: Channel) -> str:
    """An MCP session the SDK has checked (SSE's session_id, Streamable HTTP's Mcp-Session-Id),
    else the peer's address, else the one stdio client, named by the host application it says it
    is (clientInfo.name), so two hosts of one user (a desktop app and an IDE) each keep their own
    workspaces. A header the SDK does not check would let a client mint itself new shares."""
    request = context.request
    headers = getattr(request, "headers", None)
    if request is None or headers is None:
        params = context.session.client_params
        name = params.client_info.name if params is not None else ""
        return f"stdio:{name}" if name else "stdio"
    sse = channel == "sse"
    session = request.query_params.get("session_id") if sse else headers.get("mcp-session-id")
    if session:
        return f"session:{session}"
    peer = getattr(request, "client", None)
    return f"address:{peer.host}" if peer is not None else "http"


def caller_of(ctx: Context, channel: Channel, share: Share) -> Caller:
    """The caller, with its fair ``share`` of the server; the one client of a stdio (or
    in-process) server has the whole server, so an agent's parallel calls queue behind its own."""
    client = client_of(ctx, channel)
    return Caller(client, None if client.startswith("stdio") else share)
