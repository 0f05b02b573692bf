"""The operations endpoints of the HTTP transports: ``/healthz`` for probes, ``/metrics`` for Prometheus.

They are the SDK's custom routes, so both HTTP transports serve them and stdio ignores them.

Access (``guard``): with ``server.auth_token`` set, ``/metrics`` needs the bearer token like MCP
itself does (run counts tell how the server is used), and ``/healthz`` answers anyone, since
orchestrators' probes rarely carry credentials, but tells a caller without the token only the
status; the engine version and image names are for those with it. Without a token the server is
loopback-only, and these routes answer only requests whose Host is a loopback name: the SDK's
DNS-rebinding check guards its MCP endpoints, not custom routes, and a web page in a local
browser must not read them through a rebound name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_sandbox.engine.base import EngineHealth
from agent_sandbox.errors import EngineUnavailable
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server.auth import LOOPBACK_HOSTS, BearerTokenMiddleware
from agent_sandbox.server.metrics import Metrics

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
FRESH_S = 2.0  # a probe storm reaches the engine at most once per this
CHECK_TIMEOUT_S = 5.0
FULL_HEALTH = "agent_sandbox.full_health"  # scope state: may this caller see the details?


@dataclass(frozen=True)
class _Answer:
    health: EngineHealth
    checked_at: float = field(default_factory=time.monotonic)


class HealthCheck:
    """Asks the engine whether runs can start, at most once per ``FRESH_S``, off the event loop."""

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox
        self._lock = anyio.Lock()
        self._last: _Answer | None = None

    async def state(self) -> EngineHealth:
        """The engine's health, checked now unless the last answer is fresh; concurrent callers
        share one check."""
        async with self._lock:
            if self._last is None or time.monotonic() - self._last.checked_at > FRESH_S:
                self._last = _Answer(await self._check())
            return self._last.health

    async def response(self, details: bool = True) -> JSONResponse:
        """200 with what was found when runs can start; 503 naming what is wrong otherwise.
        Without ``details``, the status alone."""
        health = await self.state()
        status = "unavailable" if health.problems else "ok"
        status_code = 503 if health.problems else 200
        if not details:
            return JSONResponse({"status": status}, status_code=status_code)
        settings = self.sandbox.settings.engine
        # The engine answers for the profiles' images in order (unless it could not be asked).
        images = dict(zip(settings.profiles, health.images, strict=False))
        runtime = health.runtime  # what runs the sandboxes: the runtime classes, on Kubernetes
        offered = (
            {"runtime": {"used": runtime.used, "offered": list(runtime.offered), "details": runtime.details}}
            if runtime is not None
            else {}
        )
        load = self.sandbox.load()
        body = {
            "status": status,
            "engine": {
                "backend": settings.backend,
                "description": health.description,
                "version": health.version,
                **offered,
            },
            "images": {
                profile: {
                    "image": images[profile].name if profile in images else settings.image_of(profile),
                    "present": images[profile].present if profile in images else None,
                }
                for profile in settings.profiles
            },
            "pool": {"ready": load.warm_ready, "size": load.warm_size},
            **({"problems": [str(problem) for problem in health.problems]} if health.problems else {}),
        }
        return JSONResponse(body, status_code=status_code)

    async def _check(self) -> EngineHealth:
        with anyio.move_on_after(CHECK_TIMEOUT_S):
            return await self.sandbox.health()
        name = self.sandbox.engine_name
        problem = EngineUnavailable(
            f"{name} did not answer within {CHECK_TIMEOUT_S:g} s; check that it is running and not "
            "overloaded (agent-sandbox doctor)"
        )
        return EngineHealth(name, None, problems=[problem])


def add_routes(server: MCPServer, sandbox: Sandbox, metrics: Metrics) -> None:
    """Add ``/healthz`` and ``/metrics`` to the HTTP apps ``server`` makes."""
    health = HealthCheck(sandbox)

    # The SDK leaves custom_route unannotated.
    @server.custom_route(HEALTH_PATH, methods=["GET"], include_in_schema=False)  # type: ignore[untyped-decorator]
    async def healthz(request: Request) -> Response:
        return await health.response(details=request.scope.get("state", {}).get(FULL_HEALTH, False))

    @server.custom_route(METRICS_PATH, methods=["GET"], include_in_schema=False)  # type: ignore[untyped-decorator]
    async def scrape(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept", ""))
        return Response(body, headers={"content-type": content_type})


def guard(app: ASGIApp, token: str) -> ASGIApp:
    """``app`` behind the bearer ``token`` when there is one, with the ops routes' own rules (see
    the module docstring)."""
    behind_token = BearerTokenMiddleware(app, token) if token else None

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else None
        if behind_token is None:
            if path in (HEALTH_PATH, METRICS_PATH) and _host_name(scope) not in LOOPBACK_HOSTS:
                await JSONResponse({"error": "Invalid Host header"}, status_code=421)(scope, receive, send)
            else:
                await app(_with_health_details(scope, True), receive, send)
        elif path == HEALTH_PATH:
            await app(_with_health_details(scope, behind_token.admits(scope)), receive, send)
        else:
            await behind_token(scope, receive, send)

    return dispatch


def _with_health_details(scope: Scope, allowed: bool) -> Scope:
    """``scope`` saying whether /healthz may show its details (it shows none unless told)."""
    if scope["type"] != "http":
        return scope
    return {**scope, "state": {**scope.get("state", {}), FULL_HEALTH: allowed}}


def _host_name(scope: Scope) -> str:
    """The name in the request's Host header, lowercased, without its port (``[::1]:8000`` is
    ``::1``); empty when the header is not a host and an optional port."""
    host: str = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
    if host.startswith("["):
        name, _, after = host[1:].partition("]")
        if after and not after.startswith(":"):
            return ""
        port = after[1:]
    else:
        name, _, port = host.partition(":")
    return name if port == "" or port.isdigit() else ""
