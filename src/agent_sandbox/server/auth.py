"""Bearer-token authentication for the HTTP transports, and where a token is required."""

from __future__ import annotations

import hmac
import ipaddress
import json

from starlette.types import ASGIApp, Receive, Scope, Send


class AuthConfigError(Exception):
    """The server would be reachable from other machines without a token."""


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it resolves to something others can reach


def require_token_off_loopback(host: str, token: str) -> None:
    """Refuse to serve beyond loopback without a token."""
    if not token and not is_loopback(host):
        raise AuthConfigError(
            f"refusing to listen on {host} without a token: anyone who can reach it could run code "
            "here. Set AGENT_SANDBOX_SERVER__AUTH_TOKEN (or server.auth_token), or bind to 127.0.0.1"
        )


class BearerTokenMiddleware:
    """Answers 401 to every HTTP request without ``Authorization: Bearer <token>``.

    The comparison takes the same time whatever the token sent, so its bytes cannot be guessed
    one at a time."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(sent, self._expected):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "unauthorized", "detail": "send Authorization: Bearer <token>"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="agent-sandbox"'),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
