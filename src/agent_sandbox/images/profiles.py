"""Image profiles: what each sandbox image holds. A profile's build context is a folder here with
a Dockerfile and, when it adds packages, a ``requirements.txt`` of exact pins; profiles that differ
only in their Python (``minimal`` and ``minimal-3.13``) share the folder, and the Debian release
that ships their Python is the base they start from."""

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


# The Debian release whose python3 each offered CPython is: a profile's base image is that release.
DEBIAN_RELEASES = {"3.11": "bookworm", "3.13": "trixie"}


class UnknownProfile(ValueError):
    """No profile has that name."""


@dataclass(frozen=True)
class Profile:
    """One sandbox image: its name, what it is for, the profile it builds on, its Python, and
    the folder it is built from."""

    name: str
    summary: str
    base_profile: str | None = None  # None: built from the Debian or public Python base
    python: str = "3.11"  # the CPython its Debian release ships: "3.11" (bookworm), "3.13" (trixie)
    context: str | None = None  # the folder under images/ it is built from; None: its name

    @property
    def folder(self) -> Path:
        """The build context: Dockerfile and pinned requirements."""
        return IMAGES_DIR / (self.context or self.name)

    @property
    def debian(self) -> str:
        """The Debian release it is built on, the one whose python3 is its ``python``."""
        return DEBIAN_RELEASES[self.python]

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


_DATASCIENCE = (
    "and the data-analysis stack, matplotlib drawing with the non-interactive Agg backend (save "
    "figures to files)"
)
PROFILES = {
    profile.name: profile
    for profile in (
        Profile("minimal", "CPython 3.11 and its standard library only"),
        Profile("datascience", f"CPython 3.11 {_DATASCIENCE}", base_profile="minimal"),
        # The same two on Debian trixie's CPython 3.13, from the same folders and pins.
        Profile(
            "minimal-3.13", "CPython 3.13 and its standard library only", python="3.13", context="minimal"
        ),
        Profile(
            "datascience-3.13",
            f"CPython 3.13 {_DATASCIENCE}",
            base_profile="minimal-3.13",
            python="3.13",
            context="datascience",
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
