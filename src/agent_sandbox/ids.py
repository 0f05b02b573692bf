"""Unguessable ids for workspaces and background runs: 128 random bits, URL-safe, and never
starting with "-", which a command line would take for an option (`agent-sandbox runs status
ID`, an MCP client's `tasks/cancel ID`): one id in 64 did."""

from __future__ import annotations

import secrets


def new_id() -> str:
    """22 characters of ``[A-Za-z0-9_-]``, the first never ``-``."""
    while (candidate := secrets.token_urlsafe(16)).startswith("-"):
        pass
    return candidate
