"""Image profiles: what each sandbox image holds. A profile is a folder here with a Dockerfile
and, when it adds packages, a ``requirements.txt`` of exact pins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from agent_sandbox.packages.requirements import REQUIREMENTS_FILE, requirements_file

IMAGES_DIR = Path(__file__).parent
# Baked into every profile: installs a run's wheels offline (about 60 ms for a small one).
INSTALLER_REQUIREMENT = "uv==0.13.9"
# Baked into every profile: pickles a notebook cell's names for the next cell of its workspace
# (engine/notebook_state.py says why dill). The dev extra pins the same version for its tests.
STATE_REQUIREMENT = "dill==0.4.1"


class UnknownProfile(ValueError):
    """No profile has that name."""


@dataclass(frozen=True)
class Profile:
    """One sandbox image: its name, what it is for, and the profile it builds on."""

    name: str
    summary: str
    base_profile: str | None = None  # None: built from the Debian or public Python base

    @property
    def folder(self) -> Path:
        """The build context: Dockerfile and pinned requirements."""
        return IMAGES_DIR / self.name

    def packages(self) -> list[str]:
        """The pinned packages it adds to the standard library (without their dependencies)."""
        path = self.folder / REQUIREMENTS_FILE
        return requirements_file(path.read_text()) if path.is_file() else []

    def pinned_names(self) -> set[str]:
        """The canonical names it pins, its base profiles' included (images build on them)."""
        names = {canonicalize_name(Requirement(spec).name) for spec in self.packages()}
        base = PROFILES.get(self.base_profile) if self.base_profile else None
        return names | (base.pinned_names() if base is not None else set())

    def describe(self) -> str:
        """One line for tool descriptions: the name, the summary and every pinned package."""
        packages = self.packages()
        listed = f": {', '.join(packages)}" if packages else ""
        return f"'{self.name}' ({self.summary}{listed})"


PROFILES = {
    profile.name: profile
    for profile in (
        Profile("minimal", "CPython 3.11 and its standard library only"),
        Profile(
            "datascience",
            "minimal plus the data-analysis stack, matplotlib drawing with the non-interactive "
            "Agg backend (save figures to files)",
            base_profile="minimal",
        ),
    )
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; ``UnknownProfile`` names the ones there are."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfile(f"unknown image profile {name!r}; known profiles: {sorted(PROFILES)}") from None


def profiles_pinning(distribution: str, offered: Sequence[str]) -> list[str]:
    """The offered profiles (in the order given; unknown and repeated names skipped) that pin
    ``distribution``, themselves or through the profile they build on. Only pins count: a
    dependency of a pin is in the image too, but is not known here."""
    wanted = canonicalize_name(distribution)
    return [
        name
        for name in dict.fromkeys(offered)
        if name in PROFILES and wanted in PROFILES[name].pinned_names()
    ]
