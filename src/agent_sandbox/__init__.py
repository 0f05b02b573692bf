"""agent-sandbox: run model-written Python in fresh, hardened, offline Docker containers."""

from agent_sandbox.config import Settings, load_settings
from agent_sandbox.errors import Busy, EngineError, Refused, SandboxError
from agent_sandbox.models import ProjectFile, RunRequest, RunResult, Violation, ViolationKind
from agent_sandbox.sandbox import RequestError, Sandbox

__all__ = [
    "Busy",
    "EngineError",
    "ProjectFile",
    "Refused",
    "RequestError",
    "RunRequest",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "Settings",
    "Violation",
    "ViolationKind",
    "load_settings",
]
