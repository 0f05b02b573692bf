"""The operator's rules for per-run requirements: on or off, allowed and denied names, and caps."""

from __future__ import annotations

from collections.abc import Sequence

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from agent_sandbox.config import PackageSettings
from agent_sandbox.errors import PackageRefused
from agent_sandbox.packages.cache import CachedWheel


def check_requested(requirements: Sequence[Requirement], settings: PackageSettings) -> None:
    """Refuse what may not even be looked up: requirements while they are off, too many, or a
    name the allow list lacks or the deny list has."""
    if not requirements:
        return
    if not settings.enabled:
        raise PackageRefused(
            "per-run requirements are turned off on this server; use the standard library, or "
            "an image profile that already has the package"
        )
    if len(requirements) > settings.max_requirements:
        raise PackageRefused(
            f"{len(requirements)} requirements asked for, more than the {settings.max_requirements} "
            "allowed; keep only the ones the program imports"
        )
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name in settings.deny:
            raise PackageRefused(
                f"package {requirement.name!r} is denied by this server's policy; do without it"
            )
        if settings.allow and name not in settings.allow:
            raise PackageRefused(
                f"package {requirement.name!r} is not on this server's allow list "
                f"({', '.join(settings.allow)}); use one of those or the standard library"
            )


def check_resolved(wheels: Sequence[CachedWheel], settings: PackageSettings) -> None:
    """Refuse a resolution that pulls in a denied package, or too many or too large wheels."""
    for wheel in wheels:
        if wheel.name in settings.deny:
            raise PackageRefused(
                f"package {wheel.name!r} is denied by this server's policy, and what you asked for "
                "depends on it; choose a package that does not"
            )
    if len(wheels) > settings.max_wheels:
        raise PackageRefused(
            f"the requirements resolve to {len(wheels)} wheels, more than the {settings.max_wheels} "
            "allowed; ask for fewer packages"
        )
    total_mib = sum(wheel.size for wheel in wheels) / (1024 * 1024)
    if total_mib > settings.max_total_mib:
        raise PackageRefused(
            f"the requirements resolve to {total_mib:.0f} MiB of wheels, more than the "
            f"{settings.max_total_mib} MiB allowed; ask for fewer or smaller packages"
        )
