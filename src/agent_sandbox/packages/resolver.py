"""Resolve requirements to wheels on the host with ``pip download --only-binary=:all:``: pip
picks versions and dependencies for the sandbox's Python and platform, and never builds a source
distribution, so no package's own code runs on the host. Results are cached (see ``cache``)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import anyio
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from agent_sandbox.packages.cache import CachedWheel, WheelCache
from agent_sandbox.packages.requirements import PackageRefused
from agent_sandbox.packages.target import WheelTarget

PIP = (sys.executable, "-m", "pip")
_NO_MATCH = re.compile(
    r"Could not find a version that satisfies the requirement (?P<spec>.+?) "
    r"\(from versions: (?P<versions>.*)\)"
)
_MAX_LISTED_VERSIONS = 8
_ERROR_LINES = 6


@dataclass(frozen=True)
class Resolution:
    """The wheels a list of requirements needs, and how they were found."""

    requirements: tuple[str, ...]
    wheels: tuple[CachedWheel, ...]
    from_cache: bool
    seconds: float


class WheelResolver:
    """Turns requirements into cached wheels for ``target``."""

    def __init__(self, cache: WheelCache, target: WheelTarget, *, timeout_s: float, max_age_s: float):
        self.cache = cache
        self.target = target
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self._locks: dict[str, anyio.Lock] = {}

    async def resolve(self, requirements: Sequence[Requirement]) -> Resolution:
        """The wheels for ``requirements``: from the cache when resolved recently, else downloaded.
        Raises ``PackageRefused`` naming a requirement that has no wheel for the sandbox."""
        started = time.monotonic()
        specs = tuple(sorted(str(requirement) for requirement in requirements))
        key = hashlib.sha256(json.dumps([specs, asdict(self.target)]).encode()).hexdigest()
        # One download per requirement list at a time; whoever waited then finds it cached.
        async with self._locks.setdefault(key, anyio.Lock()):
            cached = self.cache.recall(key, self.max_age_s)
            if cached is not None:
                return Resolution(specs, tuple(cached), True, time.monotonic() - started)
            wheels = await self._download(specs)
            self.cache.remember(key, specs, wheels)
        return Resolution(specs, tuple(wheels), False, time.monotonic() - started)

    async def _download(self, specs: Sequence[str]) -> list[CachedWheel]:
        with self.cache.download_folder() as folder:
            command = [
                *PIP, "download", "--dest", str(folder), "--no-input", "--progress-bar", "off",
                "--disable-pip-version-check", *self.target.pip_options(), "--", *specs,
            ]  # fmt: skip
            succeeded, output = await self._pip(command)
            if not succeeded:
                raise PackageRefused(await self._explain(output))
            files = sorted(folder.iterdir())
            strays = [path.name for path in files if path.suffix != ".whl"]
            if strays:  # --only-binary makes this impossible; never hand a sandbox anything else
                raise PackageRefused(f"pip downloaded files that are not wheels: {strays}")
            return [self.cache.add(path) for path in files]

    async def _pip(self, command: Sequence[str]) -> tuple[bool, str]:
        """Run pip: whether it succeeded, and what it printed."""
        try:
            with anyio.fail_after(self.timeout_s):
                done = await anyio.run_process(command, check=False, stderr=subprocess.STDOUT)
        except TimeoutError:
            raise PackageRefused(
                f"resolving the requirements took longer than {self.timeout_s:g} s and was "
                "stopped; ask for fewer packages, or try again"
            ) from None
        return done.returncode == 0, done.stdout.decode(errors="replace")

    async def _explain(self, pip_output: str) -> str:
        """Why pip found nothing, in words a model can act on."""
        match = _NO_MATCH.search(pip_output)
        if match is None:
            errors = [line for line in pip_output.splitlines() if line.startswith("ERROR")]
            detail = "\n".join((errors or pip_output.splitlines())[-_ERROR_LINES:])
            return f"the requirements could not be resolved to wheels: {detail}"
        spec, versions = match["spec"], match["versions"].strip()
        where = f"the sandbox ({self.target.describe()})"
        if versions != "none":
            listed = ", ".join(versions.split(", ")[-_MAX_LISTED_VERSIONS:])
            return (
                f"requirement {spec!r}: no release that matches it has a wheel for {where}; "
                f"releases with one: {listed}. Ask for one of those"
            )
        name = Requirement(spec).name
        if await self._index_has(name):
            return (
                f"requirement {spec!r}: {name} has no wheel for {where}, only source distributions "
                "(or wheels for other platforms). Source distributions are never built here, since "
                "building runs the package's own code on the host; use a package that publishes "
                "wheels, or the standard library"
            )
        return (
            f"requirement {spec!r}: the package index has no project called "
            f"{canonicalize_name(name)!r}; check the name"
        )

    async def _index_has(self, name: str) -> bool:
        """Whether the index lists any release of ``name`` at all, wheel or not."""
        command = [*PIP, "index", "versions", "--no-input", "--disable-pip-version-check", "--", name]
        succeeded, output = await self._pip(command)
        return succeeded and "Available versions:" in output
