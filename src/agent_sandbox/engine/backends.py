"""Which engine runs the sandboxes: the one place that knows the backends."""

from __future__ import annotations

from agent_sandbox.config import Settings
from agent_sandbox.engine.base import Engine


def make_engine(settings: Settings) -> Engine:
    """The engine ``settings`` configure (``engine.backend``). Each backend's client library is
    imported only when it is chosen."""
    if settings.engine.backend == "kubernetes":
        from agent_sandbox.engine.kubernetes import KubernetesEngine

        return KubernetesEngine(settings.engine, settings.kubernetes, settings.limits.pids)
    if settings.engine.backend == "oci":
        from agent_sandbox.engine.oci import OciEngine

        return OciEngine(settings.engine)
    from agent_sandbox.engine.docker import DockerEngine

    return DockerEngine(settings.engine)
