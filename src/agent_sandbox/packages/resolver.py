"""Resolve requirements to wheels on the host, for the sandbox's Python rather than the host's.

Two steps, neither of which ever builds a source distribution (so no package's own code runs on
the host):

1. ``uv pip compile --only-binary :all:`` picks versions and dependencies for the target: its
   Python version, with environment markers (``; python_version < "3.12"``) evaluated for that
   version and its platform, without needing an interpreter of that version. uv is given the
   package index pip is configured with here (``pip config list``), and pip's way of choosing
   among several indexes (the best version on any of them).
2. ``pip download --no-deps --only-binary=:all:`` fetches exactly those pins' wheels for the
   target's Python, ABI and glibc.

Both run in an empty folder of their own (so no name can match a local file), with their
temporary files inside it, and are stopped once that folder outgrows the size cap or the time
limit passes. Results are cached (see ``cache``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.abc import Process
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from uv import find_uv_bin

from agent_sandbox.config import PackageSettings
from agent_sandbox.errors import PackageRefused
from agent_sandbox.packages.cache import CachedWheel, WheelCache
from agent_sandbox.packages.target import WheelTarget

PIP = (sys.executable, "-m", "pip")
DEFAULT_INDEX = "https://pypi.org/simple"
_PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)")
# What uv says when it finds no solution, and the requirement it names ("spec").
_UV_UNKNOWN = re.compile(r"Because (?P<spec>\S+) was not found in the package (?:registry|index)")
_UV_NEEDS_PYTHON = re.compile(r"(?P<spec>\S+) depends on (?:one of: )?Python(?P<python>[^\s,]+)")
_UV_SUPPORTS = re.compile(r"e\.g\., (?P<spec>\S+) only supports (?P<python>.+?)\)\. ")
_UV_NO_VERSION = re.compile(r"there (?:is|are) no versions? of (?P<spec>\S+?),? (?:and|we)")
_UV_NO_WHEEL = re.compile(r"(?:all versions of )?(?P<spec>\S+) (?:has|have) no (?:usable )?wheels")
_UV_REQUIRED = re.compile(r"you require (?P<spec>\S+?),? (?:and|we)")
_MAX_LISTED_VERSIONS = 8
_MAX_CAUSE_CHARS = 600
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
    """Turns requirements into cached wheels for a ``WheelTarget`` (a sandbox's Python)."""

    def __init__(
        self,
        cache: WheelCache,
        *,
        timeout_s: float,
        max_age_s: float,
        max_download_mib: int,
        max_cache_mib: int,
    ):
        self.cache = cache
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self.max_download_bytes = max_download_mib * 1024 * 1024
        self.max_cache_bytes = max_cache_mib * 1024 * 1024
        self._locks: dict[str, anyio.Lock] = {}
        self._index: tuple[list[str], dict[str, str]] | None = None

    @classmethod
    def from_settings(cls, settings: PackageSettings, max_download_mib: int | None = None) -> WheelResolver:
        """The resolver ``settings`` describe; image builds pass a download cap of their own."""
        return cls(
            WheelCache(settings.cache_path),
            timeout_s=settings.resolve_timeout_s,
            max_age_s=settings.resolution_ttl_s,
            max_download_mib=max_download_mib or settings.max_total_mib,
            max_cache_mib=settings.max_cache_mib,
        )

    async def resolve(self, requirements: Sequence[Requirement], target: WheelTarget) -> Resolution:
        """The wheels for ``requirements`` on ``target``: from the cache when resolved recently,
        else downloaded. Raises ``PackageRefused`` naming a requirement that has no wheel for it."""
        started = time.monotonic()
        specs = tuple(sorted(str(requirement) for requirement in requirements))
        key = resolution_key(requirements, target)
        # One download per requirement list at a time; whoever waited then finds it cached.
        lock = self._locks.setdefault(key, anyio.Lock())
        try:
            async with lock:
                cached = self.cache.recall(key, self.max_age_s)
                if cached is not None:
                    return Resolution(specs, tuple(cached), True, time.monotonic() - started)
                wheels = await self._download(specs, target)
                self.cache.remember(key, specs, wheels)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(key, None)  # keep only the locks in use
        await anyio.to_thread.run_sync(self.cache.trim, self.max_cache_bytes, wheels)
        return Resolution(specs, tuple(wheels), False, time.monotonic() - started)

    async def _download(self, specs: Sequence[str], target: WheelTarget) -> list[CachedWheel]:
        deadline = time.monotonic() + self.timeout_s
        with self.cache.download_folder() as folder:
            pins = await self._compile(specs, target, folder, deadline)
            if not pins:  # every requirement's marker leaves it out on this target
                return []
            wheels = folder / "wheels"
            wheels.mkdir()
            command = [
                *PIP, "download", "--dest", str(wheels), "--no-input", "--progress-bar", "off",
                "--no-cache-dir", "--disable-pip-version-check", "--no-deps", *target.pip_options(),
                "--", *pins,
            ]  # fmt: skip
            succeeded, output = await self._run(command, folder, deadline)
            if not succeeded:
                raise PackageRefused(
                    f"the wheels chosen for the sandbox ({target.describe()}) could not be "
                    f"downloaded: {_error_lines(output)}"
                )
            files = sorted(wheels.iterdir())
            strays = [path.name for path in files if path.suffix != ".whl"]
            if strays:  # --only-binary makes this impossible; never hand a sandbox anything else
                raise PackageRefused(f"pip downloaded files that are not wheels: {strays}")
            return await anyio.to_thread.run_sync(lambda: [self.cache.add(path) for path in files])

    async def _compile(
        self, specs: Sequence[str], target: WheelTarget, folder: Path, deadline: float
    ) -> list[str]:
        """The pins (``name==version``) ``specs`` come to on ``target``, as uv resolves them."""
        index_options, index_env = await self._index_configuration(folder)
        (folder / "requirements.in").write_text("".join(f"{spec}\n" for spec in specs))
        command = [
            find_uv_bin(), "pip", "compile", "requirements.in", "--output-file", "pins.txt",
            "--no-config", "--no-cache", "--no-python-downloads", "--python", sys.executable,
            "--python-version", target.python, "--python-platform", target.uv_platform(),
            "--only-binary", ":all:", "--no-header", "--no-annotate", "--color", "never",
            *index_options,
        ]  # fmt: skip
        succeeded, output = await self._run(command, folder, deadline, index_env)
        if not succeeded:
            raise PackageRefused(await self._explain(output, specs, target, folder))
        pins = []
        for line in (folder / "pins.txt").read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if _PIN.fullmatch(line) is None:
                raise PackageRefused(f"the resolver gave something other than a pinned version: {line!r}")
            pins.append(line)
        return pins

    async def _index_configuration(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        """uv's options and environment for the package index pip is configured with."""
        if self._index is None:
            command = [*PIP, "config", "list", "--no-input", "--disable-pip-version-check"]
            succeeded, output = await self._run(command, folder, time.monotonic() + self.timeout_s)
            if not succeeded:
                raise PackageRefused(f"pip's configuration could not be read: {_error_lines(output)}")
            self._index = uv_index_options(read_pip_config(output))
        return self._index

    async def _run(
        self,
        command: Sequence[str],
        folder: Path,
        deadline: float,
        extra_env: Mapping[str, str] | None = None,
    ) -> tuple[bool, str]:
        """Run ``command`` in ``folder`` (its temporary files too): whether it succeeded, and
        what it printed. Stopped at ``deadline``, or when ``folder`` outgrows the download cap."""
        scratch = folder / "tmp"
        scratch.mkdir(exist_ok=True)
        # uv takes its index and options from the command line only, never from UV_ variables.
        env = {name: value for name, value in os.environ.items() if not name.startswith("UV_")}
        env.update(extra_env or {}, TMPDIR=str(scratch))
        try:
            with anyio.fail_after(max(deadline - time.monotonic(), 0)):
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

    async def _explain(self, uv_output: str, specs: Sequence[str], target: WheelTarget, folder: Path) -> str:
        """Why uv found no wheels, in words a model can act on: which requirement, for which
        target, and the releases that would do."""
        where = f"the sandbox ({target.describe()})"
        cause = uv_cause(uv_output)
        found = uv_culprit(cause)
        if found is None:
            detail = cause[:_MAX_CAUSE_CHARS] if cause else _error_lines(uv_output)
            return f"the requirements could not be resolved to wheels for {where}: {detail}"
        spec, unknown = found
        try:
            name = Requirement(spec).name
        except InvalidRequirement:
            name = spec
        asked = {canonicalize_name(Requirement(asked).name) for asked in specs}
        what = "requirement" if canonicalize_name(name) in asked else "dependency"
        no_project = (
            f"{what} {spec!r}: the package index has no project called {canonicalize_name(name)!r}; "
            "check the name"
        )
        if unknown:
            return no_project
        needs = _UV_SUPPORTS.search(" ".join(uv_output.split())) or _UV_NEEDS_PYTHON.search(cause)
        why = f": {needs['spec']} requires Python {needs['python']}" if needs else ""
        versions = await self._versions(name, folder, target.pip_options())
        if versions:
            listed = ", ".join(versions[-_MAX_LISTED_VERSIONS:])
            return (
                f"{what} {spec!r}: no release that matches it has a wheel for {where}{why}; "
                f"releases with one: {listed}. Ask for one of those"
            )
        if await self._versions(name, folder, []):
            return (
                f"{what} {spec!r}: {name} has no wheel for {where}{why}, only source distributions "
                "(or wheels for other Python versions or platforms). Source distributions are never "
                "built here, since building runs the package's own code on the host; use a package "
                "that publishes wheels, or the standard library"
            )
        return no_project

    async def _versions(self, name: str, folder: Path, target_options: Sequence[str]) -> list[str]:
        """The releases of ``name`` on the index, oldest first: those with a wheel for the
        target that ``target_options`` describe, or with no options any at all."""
        command = [*PIP, "index", "versions", "--no-input", "--disable-pip-version-check", *target_options]
        command += ["--", name]
        succeeded, output = await self._run(command, folder, time.monotonic() + self.timeout_s)
        found = re.search(r"^Available versions: (.*)$", output, re.MULTILINE) if succeeded else None
        return list(reversed(found[1].split(", "))) if found else []


def resolution_key(requirements: Sequence[Requirement], target: WheelTarget) -> str:
    """The cache key of a requirement list: the same for any spelling of the same names."""
    canonical = []
    for requirement in requirements:
        normalised = Requirement(str(requirement))
        normalised.name = canonicalize_name(requirement.name)
        normalised.extras = {canonicalize_name(extra) for extra in requirement.extras}
        canonical.append(str(normalised))
    return hashlib.sha256(json.dumps([sorted(canonical), asdict(target)]).encode()).hexdigest()


def uv_cause(uv_output: str) -> str:
    """The reasoning of uv's "No solution found" error, on one line ("Because ..."), else ""."""
    lines = uv_output.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("cause:") or line.strip().startswith("╰─▶"):
            paragraph = []
            for follow in lines[index:]:
                if not follow.strip() or follow.startswith("hint:"):
                    break
                paragraph.append(follow.strip().removeprefix("cause:").removeprefix("╰─▶"))
            return " ".join(" ".join(paragraph).split())
    return ""


def uv_culprit(cause: str) -> tuple[str, bool] | None:
    """From uv's reasoning: the requirement that has no wheel (a dependency's, when it was one),
    and whether that is because the index has no such project."""
    unknown = _UV_UNKNOWN.search(cause)
    if unknown is not None:
        return unknown["spec"], True
    for pattern in (_UV_NEEDS_PYTHON, _UV_NO_VERSION, _UV_NO_WHEEL, _UV_REQUIRED):
        found = pattern.search(cause)
        if found is not None:
            return found["spec"], False
    return None


def read_pip_config(listing: str) -> dict[str, str]:
    """pip's settings for ``pip download`` from ``pip config list``'s ``section.key='value'``
    lines: a ``[download]`` section wins over ``[global]``, and PIP_ variables over both."""
    by_section: dict[str, dict[str, str]] = {}
    for line in listing.splitlines():
        name, equals, quoted = line.partition("=")
        section, dot, key = name.rpartition(".")
        if not equals or not dot:
            continue
        try:
            value = ast.literal_eval(quoted)
        except (ValueError, SyntaxError):
            continue
        by_section.setdefault(section, {})[key.replace("_", "-")] = str(value)
    settings: dict[str, str] = {}
    for section in ("global", "download", ":env:"):
        settings.update(by_section.get(section, {}))
    return settings


def uv_index_options(pip_config: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """uv's command-line options and environment for the index, links, hosts, constraints,
    certificate and proxy pip is configured with. uv takes from every index the best version,
    as pip does (uv's own default would take a project from the first index that has it)."""
    options = [
        "--index-url",
        pip_config.get("index-url", DEFAULT_INDEX),
        "--index-strategy",
        "unsafe-best-match",
    ]
    for key, option in (
        ("extra-index-url", "--extra-index-url"),
        ("find-links", "--find-links"),
        ("trusted-host", "--allow-insecure-host"),
        ("constraint", "--constraint"),
    ):
        for value in pip_config.get(key, "").split():
            options += [option, value]
    if pip_config.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        options.append("--no-index")
    env = {}
    if "cert" in pip_config:
        env["SSL_CERT_FILE"] = pip_config["cert"]
    if "client-cert" in pip_config:
        env["SSL_CLIENT_CERT"] = pip_config["client-cert"]
    if "proxy" in pip_config:
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = pip_config["proxy"]
    timeout = pip_config.get("timeout") or pip_config.get("default-timeout")
    if timeout:
        env["UV_HTTP_TIMEOUT"] = timeout
    return options, env


def _error_lines(output: str) -> str:
    errors = [line for line in output.splitlines() if line.lower().startswith("error")]
    return "\n".join((errors or output.splitlines())[-_ERROR_LINES:])


def _size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # pip moved or removed it meanwhile
    return total
