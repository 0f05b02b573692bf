"""The ops routes' guard on its own: which Host names reach /healthz and /metrics on a tokenless
server, and who gets /healthz's details when there is a token (an ASGI app stands in for MCP)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from agent_sandbox.server.ops import FULL_HEALTH, guard

pytestmark = pytest.mark.anyio
TOKEN = "a-token-of-sixteen-or-more"


async def inner(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 200 with whether /healthz details were allowed."""
    allowed = str(scope.get("state", {}).get(FULL_HEALTH)).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": allowed})


async def call(token: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [(name.encode(), value.encode()) for name, value in headers.items()],
    }
    await guard(inner, token)(scope, receive, send)
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8000", 200),
        ("localhost:8000", 200),
        ("LOCALHOST:8000", 200),
        ("localhost", 200),
        ("[::1]:8000", 200),
        ("attacker.example:8000", 421),
        ("localhost.attacker.example:8000", 421),
        ("[::1]evil", 421),
        ("127.0.0.1:80:80", 421),
        ("", 421),
    ],
)
@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
async def test_without_a_token_only_loopback_names_reach_the_ops_routes(
    path: str, host: str, status: int
) -> None:
    assert (await call("", path, {"host": host}))[0] == status


async def test_without_a_token_mcp_is_left_to_the_sdks_own_check() -> None:
    assert (await call("", "/mcp", {"host": "attacker.example"}))[0] == 200


async def test_with_a_token_healthz_details_need_it_and_everything_else_needs_it() -> None:
    assert await call(TOKEN, "/healthz", {}) == (200, b"False")
    assert await call(TOKEN, "/healthz", {"authorization": f"Bearer {TOKEN}"}) == (200, b"True")
    assert (await call(TOKEN, "/metrics", {}))[0] == 401
    assert (await call(TOKEN, "/metrics", {"authorization": f"Bearer {TOKEN}"}))[0] == 200
    assert (await call(TOKEN, "/mcp", {}))[0] == 401
