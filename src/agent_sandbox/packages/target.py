"""Which wheels can run in the sandbox: its Python, its C library and its CPU."""

from __future__ import annotations

import platform
from dataclasses import dataclass

_OLDEST_MANYLINUX_MINOR = 5
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
# The newest glibc that uv (the pinned release) names in --python-platform: a newer glibc is
# resolved as this one, which only leaves out wheels that need a glibc newer than 2.40.
_UV_NEWEST_MANYLINUX_MINOR = 40


@dataclass(frozen=True)
class WheelTarget:
    """A CPython version on a glibc Linux; ``pip download`` is told to fetch for it."""

    python: str  # "3.11"
    glibc: tuple[int, int]
    machine: str  # "x86_64", "aarch64"

    def describe(self) -> str:
        """In words, for error messages."""
        major, minor = self.glibc
        return f"CPython {self.python} on Linux {self.machine} with glibc {major}.{minor}"

    def platforms(self) -> list[str]:
        """Every manylinux tag this glibc runs, newest first (pip does not widen them itself)."""
        major, newest = self.glibc
        tags = []
        for minor in range(newest, _OLDEST_MANYLINUX_MINOR - 1, -1):
            tags.append(f"manylinux_{major}_{minor}_{self.machine}")
            if minor in _LEGACY_MANYLINUX:
                tags.append(f"{_LEGACY_MANYLINUX[minor]}_{self.machine}")
        return tags

    def uv_platform(self) -> str:
        """uv's ``--python-platform`` for this target: its CPU and glibc (the newest uv knows)."""
        major, minor = self.glibc
        return f"{self.machine}-manylinux_{major}_{min(minor, _UV_NEWEST_MANYLINUX_MINOR)}"

    def pip_options(self) -> list[str]:
        """``pip download`` options that select wheels for this target and nothing else."""
        abi = "cp" + self.python.replace(".", "")
        options = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python]
        for tag in (abi, "abi3", "none"):
            options += ["--abi", tag]
        for tag in self.platforms():
            options += ["--platform", tag]
        return options


# Each profile is a Debian release with its CPython (``Profile.python``): bookworm (glibc 2.36)
# has 3.11, trixie (glibc 2.41) 3.13; on the engine's CPU, which is this machine's: the engine is
# local. tests/integration/test_packages.py checks each profile against its target.
TARGETS = {
    "3.11": WheelTarget(python="3.11", glibc=(2, 36), machine=platform.machine()),
    "3.13": WheelTarget(python="3.13", glibc=(2, 41), machine=platform.machine()),
}


def target_for(python: str) -> WheelTarget:
    """The target of a sandbox whose CPython is ``python`` ("3.11")."""
    try:
        return TARGETS[python]
    except KeyError:
        raise ValueError(f"no wheel target for Python {python!r}; known: {sorted(TARGETS)}") from None
