"""Which engine runs the sandboxes: the one place that knows the backends."""

from __future__ import annotations

from agent_sandbox.config import EngineSettings
from agent_sandbox.engine.base import Engine
from agent_sandbox.engine.docker import DockerEngine


def make_engine(settings: EngineSettings) -> Engine:
    """The engine ``settings`` configure: the Docker backend (the only one so far)."""
    return DockerEngine(settings)
