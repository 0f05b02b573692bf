"""The operations endpoints of the HTTP transports: ``/healthz`` for probes, ``/metrics`` for Prometheus.

They are the SDK's custom routes, so both HTTP transports serve them and stdio ignores them.

Auth: with ``server.auth_token`` set, ``/metrics`` needs the bearer token like MCP itself does
(run counts tell how the server is used). ``/healthz`` stays open: orchestrators' probes rarely
carry credentials, and it says only whether runs can start (engine version, image names and
whether they are present, warm-pool fill). The SDK's DNS-rebinding check guards its MCP endpoints
only, not these: they change nothing and reveal no run's contents.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_sandbox.engine.docker import EngineError, ImageMissing
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server.auth import BearerTokenMiddleware
from agent_sandbox.server.metrics import Metrics

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
FRESH_S = 2.0  # a probe storm reaches the engine at most once per this
CHECK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class EngineState:
    """What the engine said: its version, which profiles' images it has, and what is wrong."""

    version: str | None
    images: dict[str, bool | None]  # profile -> image present (None: not known)
    problems: list[str]
    checked_at: float = field(default_factory=time.monotonic)


class HealthCheck:
    """Asks the engine whether runs can start, at most once per ``FRESH_S``, off the event loop."""

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox
        self._lock = anyio.Lock()
        self._last: EngineState | None = None

    async def state(self) -> EngineState:
        """The engine's state, checked now unless the last answer is fresh; concurrent callers
        share one check."""
        async with self._lock:
            if self._last is None or time.monotonic() - self._last.checked_at > FRESH_S:
                self._last = await self._check()
            return self._last

    async def response(self) -> JSONResponse:
        """200 with what was found when runs can start; 503 naming what is wrong otherwise."""
        state = await self.state()
        settings = self.sandbox.settings.engine
        pool = self.sandbox.pool
        body = {
            "status": "unavailable" if state.problems else "ok",
            "engine": {"version": state.version},
            "images": {
                profile: {"image": settings.image_of(profile), "present": present}
                for profile, present in state.images.items()
            },
            "pool": {"ready": pool.ready if pool is not None else 0, "size": settings.pool_size},
            **({"problems": state.problems} if state.problems else {}),
        }
        return JSONResponse(body, status_code=503 if state.problems else 200)

    async def _check(self) -> EngineState:
        with anyio.move_on_after(CHECK_TIMEOUT_S):
            return await anyio.to_thread.run_sync(self._check_blocking, abandon_on_cancel=True)
        return self._unknown(
            f"the Docker engine did not answer within {CHECK_TIMEOUT_S:g} s; check that it is "
            "running and not overloaded (docker info)"
        )

    def _check_blocking(self) -> EngineState:
        images: dict[str, bool | None] = {}
        problems: list[str] = []
        settings = self.sandbox.settings.engine
        try:
            version = self.sandbox.engine.version()
        except EngineError as exc:  # no engine: nothing else can be known
            return self._unknown(str(exc))
        for profile in settings.profiles:
            try:
                self.sandbox.engine.image_attrs(settings.image_of(profile))
            except ImageMissing as exc:
                images[profile] = False
                problems.append(str(exc))
            except EngineError as exc:  # no engine: nothing else can be known
                return self._unknown(str(exc))
            else:
                images[profile] = True
        return EngineState(version, images, problems)

    def _unknown(self, problem: str) -> EngineState:
        return EngineState(None, dict.fromkeys(self.sandbox.settings.engine.profiles), [problem])


def add_routes(server: MCPServer, sandbox: Sandbox, metrics: Metrics) -> None:
    """Add ``/healthz`` and ``/metrics`` to the HTTP apps ``server`` makes."""
    health = HealthCheck(sandbox)

    # The SDK leaves custom_route unannotated.
    @server.custom_route(HEALTH_PATH, methods=["GET"], include_in_schema=False)  # type: ignore[untyped-decorator]
    async def healthz(request: Request) -> Response:
        return await health.response()

    @server.custom_route(METRICS_PATH, methods=["GET"], include_in_schema=False)  # type: ignore[untyped-decorator]
    async def scrape(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept", ""))
        return Response(body, headers={"content-type": content_type})


def behind_token(app: ASGIApp, token: str) -> ASGIApp:
    """``app`` with every request but ``/healthz`` behind the bearer ``token``."""
    guarded = BearerTokenMiddleware(app, token)

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == HEALTH_PATH:
            await app(scope, receive, send)
        else:
            await guarded(scope, receive, send)

    return dispatch
