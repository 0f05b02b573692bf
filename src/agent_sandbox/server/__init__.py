"""The MCP front end of agent-sandbox."""

from agent_sandbox.server.app import build_server

__all__ = ["build_server"]
