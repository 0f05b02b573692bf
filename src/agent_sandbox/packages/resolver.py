"""Resolve requirements to wheels on the host with ``pip download --only-binary=:all:``: pip
picks versions and dependencies for the sandbox's Python and platform, and never builds a source
distribution, so no package's own code runs on the host. Results are cached (see ``cache``).

pip runs in an empty folder of its own (so no name can match a local file), with its temporary
files inside it, and is stopped once that folder outgrows the size cap.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.abc import Process
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from agent_sandbox.config import PackageSettings
from agent_sandbox.errors import PackageRefused
from agent_sandbox.packages.cache import CachedWheel, WheelCache
from agent_sandbox.packages.target import SANDBOX_TARGET, WheelTarget

PIP = (sys.executable, "-m", "pip")
_NO_MATCH = re.compile(
    r"Could not find a version that satisfies the requirement (?P<spec>.+?)(?: \(from [^)]*\))? "
    r"\(from versions: (?P<versions>.*)\)"
)
_MAX_LISTED_VERSIONS = 8
_ERROR_LINES = 6
_SIZE_CHECK_S = 0.25


@dataclass(frozen=True)
class Resolution:
    """The wheels a list of requirements needs, and how they were found."""

    requirements: tuple[str, ...]
    wheels: tuple[CachedWheel, ...]
    from_cache: bool
    seconds: float


class WheelResolver:
    """Turns requirements into cached wheels for ``target``."""

    def __init__(
        self,
        cache: WheelCache,
        target: WheelTarget,
        *,
        timeout_s: float,
        max_age_s: float,
        max_download_mib: int,
        max_cache_mib: int,
    ):
        self.cache = cache
        self.target = target
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self.max_download_bytes = max_download_mib * 1024 * 1024
        self.max_cache_bytes = max_cache_mib * 1024 * 1024
        self._locks: dict[str, anyio.Lock] = {}

    @classmethod
    def from_settings(cls, settings: PackageSettings, max_download_mib: int | None = None) -> WheelResolver:
        """The resolver ``settings`` describe, for the sandbox's platform; image builds pass a
        download cap of their own."""
        return cls(
            WheelCache(settings.cache_path),
            SANDBOX_TARGET,
            timeout_s=settings.resolve_timeout_s,
            max_age_s=settings.resolution_ttl_s,
            max_download_mib=max_download_mib or settings.max_total_mib,
            max_cache_mib=settings.max_cache_mib,
        )

    async def resolve(self, requirements: Sequence[Requirement]) -> Resolution:
        """The wheels for ``requirements``: from the cache when resolved recently, else downloaded.
        Raises ``PackageRefused`` naming a requirement that has no wheel for the sandbox."""
        started = time.monotonic()
        specs = tuple(sorted(str(requirement) for requirement in requirements))
        key = resolution_key(requirements, self.target)
        # One download per requirement list at a time; whoever waited then finds it cached.
        lock = self._locks.setdefault(key, anyio.Lock())
        try:
            async with lock:
                cached = self.cache.recall(key, self.max_age_s)
                if cached is not None:
                    return Resolution(specs, tuple(cached), True, time.monotonic() - started)
                self._check_host_python()
                wheels = await self._download(specs)
                self.cache.remember(key, specs, wheels)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(key, None)  # keep only the locks in use
        await anyio.to_thread.run_sync(self.cache.trim, self.max_cache_bytes, wheels)
        return Resolution(specs, tuple(wheels), False, time.monotonic() - started)

    def _check_host_python(self) -> None:
        """pip evaluates environment markers (``; python_version < "3.12"``) with the Python it
        runs on, whatever ``--python-version`` says: only a matching host resolves correctly."""
        host = f"{sys.version_info.major}.{sys.version_info.minor}"
        if host != self.target.python:
            raise PackageRefused(
                f"per-run requirements are unavailable: this server runs on Python {host} but the "
                f"sandbox has {self.target.python}, so dependencies could be resolved wrongly. Use "
                "the standard library or an image profile (the operator can run the server on "
                f"Python {self.target.python})"
            )

    async def _download(self, specs: Sequence[str]) -> list[CachedWheel]:
        with self.cache.download_folder() as folder:
            wheels = folder / "wheels"
            wheels.mkdir()
            command = [
                *PIP, "download", "--dest", str(wheels), "--no-input", "--progress-bar", "off",
                "--no-cache-dir", "--disable-pip-version-check", *self.target.pip_options(),
                "--", *specs,
            ]  # fmt: skip
            succeeded, output = await self._pip(command, folder)
            if not succeeded:
                raise PackageRefused(await self._explain(output, folder))
            files = sorted(wheels.iterdir())
            strays = [path.name for path in files if path.suffix != ".whl"]
            if strays:  # --only-binary makes this impossible; never hand a sandbox anything else
                raise PackageRefused(f"pip downloaded files that are not wheels: {strays}")
            return await anyio.to_thread.run_sync(lambda: [self.cache.add(path) for path in files])

    async def _pip(self, command: Sequence[str], folder: Path) -> tuple[bool, str]:
        """Run pip in ``folder`` (its temporary files too): whether it succeeded, and what it
        printed. Stopped for time, or when ``folder`` outgrows the download cap."""
        scratch = folder / "tmp"
        scratch.mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(scratch)}
        try:
            with anyio.fail_after(self.timeout_s):
                async with await anyio.open_process(
                    command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT
                ) as process:
                    assert process.stdout is not None
                    output = bytearray()
                    async with anyio.create_task_group() as group:
                        group.start_soon(self._stop_when_too_big, folder, process)
                        async for chunk in process.stdout:
                            output += chunk
                        await process.wait()
                        group.cancel_scope.cancel()
        except TimeoutError:
            raise PackageRefused(
                f"resolving the requirements took longer than {self.timeout_s:g} s and was "
                "stopped; ask for fewer packages, or try again"
            ) from None
        if process.returncode != 0 and _size(folder) > self.max_download_bytes:
            raise PackageRefused(
                f"the requirements need more than {self.max_download_bytes // (1024 * 1024)} MiB of "
                "wheels (the limit), so the download was stopped; ask for fewer or smaller packages"
            )
        return process.returncode == 0, output.decode(errors="replace")

    async def _stop_when_too_big(self, folder: Path, process: Process) -> None:
        while True:
            await anyio.sleep(_SIZE_CHECK_S)
            if await anyio.to_thread.run_sync(_size, folder) > self.max_download_bytes:
                process.kill()
                return

    async def _explain(self, pip_output: str, folder: Path) -> str:
        """Why pip found nothing, in words a model can act on."""
        found = no_match(pip_output)
        if found is None:
            errors = [line for line in pip_output.splitlines() if line.startswith("ERROR")]
            detail = "\n".join((errors or pip_output.splitlines())[-_ERROR_LINES:])
            return f"the requirements could not be resolved to wheels: {detail}"
        spec, versions = found
        where = f"the sandbox ({self.target.describe()})"
        if versions:
            listed = ", ".join(versions[-_MAX_LISTED_VERSIONS:])
            return (
                f"requirement {spec!r}: no release that matches it has a wheel for {where}; "
                f"releases with one: {listed}. Ask for one of those"
            )
        try:
            name = Requirement(spec).name
        except InvalidRequirement:
            name = spec
        if await self._index_has(name, folder):
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

    async def _index_has(self, name: str, folder: Path) -> bool:
        """Whether the index lists any release of ``name`` at all, wheel or not."""
        command = [*PIP, "index", "versions", "--no-input", "--disable-pip-version-check", "--", name]
        succeeded, output = await self._pip(command, folder)
        return succeeded and "Available versions:" in output


def resolution_key(requirements: Sequence[Requirement], target: WheelTarget) -> str:
    """The cache key of a requirement list: the same for any spelling of the same names."""
    canonical = []
    for requirement in requirements:
        normalised = Requirement(str(requirement))
        normalised.name = canonicalize_name(requirement.name)
        normalised.extras = {canonicalize_name(extra) for extra in requirement.extras}
        canonical.append(str(normalised))
    return hashlib.sha256(json.dumps([sorted(canonical), asdict(target)]).encode()).hexdigest()


def no_match(pip_output: str) -> tuple[str, list[str]] | None:
    """From pip's "Could not find a version" error: the requirement (a dependency's, when it was
    one) and the versions that did have a wheel, if any."""
    match = _NO_MATCH.search(pip_output)
    if match is None:
        return None
    versions = match["versions"].strip()
    return match["spec"], [] if versions == "none" else versions.split(", ")


def _size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # pip moved or removed it meanwhile
    return total
