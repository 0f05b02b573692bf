"""Bearer-token authentication for the HTTP transports, and where a token is required."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send


class AuthConfigError(Exception):
    """The server would be reachable from other machines without a token."""


# Exactly the hosts for which the MCP SDK turns its DNS-rebinding protection on by itself.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    """Whether a server bound to ``host`` is reachable from this machine only AND protected by
    the SDK against DNS rebinding (other loopback spellings, like 127.0.0.2, are not)."""
    return host in LOOPBACK_HOSTS


def require_token_off_loopback(host: str, token: str) -> None:
    """Refuse to serve beyond loopback without a token, and refuse tokens too weak to matter."""
    if token and (len(token.strip()) < MIN_TOKEN_LENGTH or token != token.strip()):
        raise AuthConfigError(
            f"the auth token must be at least {MIN_TOKEN_LENGTH} characters without surrounding "
            "spaces; generate one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if not token and not is_loopback(host):
        raise AuthConfigError(
            f"refusing to listen on {host} without a token: anyone who can reach it could run code "
            "here. Set AGENT_SANDBOX_SERVER__AUTH_TOKEN (or server.auth_token), or bind to "
            f"{' or '.join(sorted(LOOPBACK_HOSTS))}"
        )


class BearerTokenMiddleware:
    """Answers 401 to every HTTP request without ``Authorization: Bearer <token>``.

    The comparison takes the same time whatever the token sent, so its bytes cannot be guessed
    one at a time."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self._expected = f"Bearer {token}".encode()

    def admits(self, scope: Scope) -> bool:
        """Whether the request carries the token."""
        return hmac.compare_digest(dict(scope["headers"]).get(b"authorization", b""), self._expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets or anything else past the token
            await send({"type": "websocket.close", "code": 1008})
            return
        if self.admits(scope):
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
