"""Third-party packages for a run, without network in the sandbox: the host checks the
requirements against policy, resolves and downloads them as wheels (never source
distributions), keeps them in a cache by hash, and hands the sandbox a read-only folder of
exactly the wheels it needs."""

from agent_sandbox.packages.cache import CachedWheel, WheelCache
from agent_sandbox.packages.policy import check_requested, check_resolved
from agent_sandbox.packages.requirements import PackageRefused, parse_requirements, requirements_file
from agent_sandbox.packages.resolver import Resolution, WheelResolver
from agent_sandbox.packages.target import SANDBOX_TARGET, WheelTarget

__all__ = [
    "SANDBOX_TARGET",
    "CachedWheel",
    "PackageRefused",
    "Resolution",
    "WheelCache",
    "WheelResolver",
    "WheelTarget",
    "check_requested",
    "check_resolved",
    "parse_requirements",
    "requirements_file",
]
