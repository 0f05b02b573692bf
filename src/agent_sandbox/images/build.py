"""``agent-sandbox image build``: build and tag the sandbox images, one per profile.

A profile's Dockerfile starts ``FROM`` the image of the profile it builds on, or, for the first,
a public Python image of its Debian release (``python:3.11-slim-bookworm``,
``python:3.13-slim-trixie``) when a registry answers. Where none does (as on machines without
registry access), that release's root filesystem is bootstrapped with ``debootstrap`` and
``docker import``-ed as the base instead (``agent-sandbox-base:bookworm``, ``:trixie``), once.
Packages never come from the network inside a build: the host resolves them to wheels for the
profile's Python (the same cache as per-run requirements) and the build context carries them in
``wheels/``.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import docker
import docker.errors

from agent_sandbox.config import EngineSettings
from agent_sandbox.engine.docker import DockerEngine
from agent_sandbox.errors import PackageRefused
from agent_sandbox.images.profiles import INSTALLER_REQUIREMENT, STATE_REQUIREMENT, Profile, get_profile
from agent_sandbox.packages.cache import link_or_copy
from agent_sandbox.packages.requirements import parse_requirements
from agent_sandbox.packages.resolver import WheelResolver
from agent_sandbox.packages.target import WheelTarget, target_for

log = logging.getLogger(__name__)

BOOTSTRAP_REPOSITORY = "agent-sandbox-base"
DEBOOTSTRAP_SCRIPTS = Path("/usr/share/debootstrap/scripts")  # one per Debian release it knows
DEFAULT_MIRROR = "http://deb.debian.org/debian"
_NOISY_DEBOOTSTRAP_LINES = ("I: Retrieving", "I: Validating", "I: Unpacking", "I: Configuring")


class ImageBuildError(Exception):
    """The image could not be built; the message says what to fix."""


def build_profiles(
    settings: EngineSettings, names: Sequence[str], wheels: WheelResolver, tag: str | None
) -> None:
    """Build each profile in ``names`` on the configured Docker engine, tagged ``tag`` (one
    profile only) or ``REPOSITORY:NAME``."""
    client = DockerEngine(settings).client
    for name in names:
        build_image(client, get_profile(name), wheels, tag or settings.image_of(name))


def build_image(client: docker.DockerClient, profile: Profile, wheels: WheelResolver, tag: str) -> str:
    """Build ``profile`` and tag it ``tag`` (``REPOSITORY:NAME``); the profile it builds on is
    ``REPOSITORY:BASE``, built first if missing. Returns the image id."""
    if profile.base_profile is None:
        base = _choose_base(client, profile)
        requirements = [INSTALLER_REQUIREMENT, STATE_REQUIREMENT]
    else:
        base = f"{tag.rpartition(':')[0]}:{profile.base_profile}"
        if not _image_exists(client, base):
            build_image(client, get_profile(profile.base_profile), wheels, base)
        requirements = profile.packages()
    with tempfile.TemporaryDirectory(prefix="agent-sandbox-build-") as tmp:
        context = Path(tmp) / "context"
        shutil.copytree(profile.folder, context)
        _add_wheels(context / "wheels", requirements, wheels, target_for(profile.python))
        log.info("building %s from %s (profile %s, CPython %s)", tag, base, profile.name, profile.python)
        image_id = _docker_build(
            client, context, tag, {"BASE": base, "PROFILE": profile.name, "PYTHON": profile.python}
        )
    log.info("built %s (%s)", tag, image_id[:19])
    return image_id


def _add_wheels(folder: Path, requirements: list[str], wheels: WheelResolver, target: WheelTarget) -> None:
    """Resolve ``requirements`` to wheels for ``target`` (the image's Python) on the host and put
    them in the build context."""
    log.info("resolving %d requirement(s) to wheels on the host ...", len(requirements))
    try:
        resolution = anyio.run(wheels.resolve, parse_requirements(requirements), target)
    except PackageRefused as exc:
        raise ImageBuildError(f"the image's packages cannot be fetched: {exc}") from None
    folder.mkdir()
    for wheel in resolution.wheels:
        link_or_copy(wheel.path, folder / wheel.filename)
    size_mib = sum(wheel.size for wheel in resolution.wheels) / (1024 * 1024)
    source = "from the cache" if resolution.from_cache else f"in {resolution.seconds:.1f} s"
    log.info("%d wheel(s), %.0f MiB, %s", len(resolution.wheels), size_mib, source)


def _docker_build(client: docker.DockerClient, context: Path, tag: str, buildargs: dict[str, str]) -> str:
    image_id = ""
    try:
        for chunk in client.api.build(
            path=str(context),
            tag=tag,
            buildargs=buildargs,
            network_mode="host",  # lets RUN apt-get reach the Debian mirror
            rm=True,
            forcerm=True,
            decode=True,
        ):
            if "error" in chunk:
                raise ImageBuildError(f"docker build failed: {chunk['error'].strip()}")
            line = str(chunk.get("stream", "")).rstrip()
            if line:
                log.info("  %s", line)
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"docker build failed: {exc.explanation or exc}") from exc
    return image_id


def public_base(profile: Profile) -> str:
    """The public Python image of ``profile``'s Python on its Debian release."""
    return f"python:{profile.python}-slim-{profile.debian}"


def bootstrap_base_tag(suite: str) -> str:
    """The tag of the Debian ``suite`` root filesystem bootstrapped here."""
    return f"{BOOTSTRAP_REPOSITORY}:{suite}"


def _choose_base(client: docker.DockerClient, profile: Profile) -> str:
    """The public base of ``profile``'s release if it is here or can be pulled, else that
    release bootstrapped with debootstrap."""
    public, bootstrapped = public_base(profile), bootstrap_base_tag(profile.debian)
    for candidate in (public, bootstrapped):
        if _image_exists(client, candidate):
            return candidate
    log.info("pulling %s ...", public)
    try:
        client.images.pull(public)
        return public
    except docker.errors.APIError as exc:
        log.info(
            "no registry answers (%s); bootstrapping Debian %s instead", _first_line(exc), profile.debian
        )
    bootstrap_base(client, profile.debian)
    return bootstrapped


def bootstrap_base(client: docker.DockerClient, suite: str, mirror: str | None = None) -> None:
    """debootstrap a minimal Debian ``suite`` with full python3 and import it as
    ``bootstrap_base_tag(suite)``."""
    debootstrap = _require_debootstrap(suite)
    mirror = mirror or debian_mirror()
    with tempfile.TemporaryDirectory(prefix="agent-sandbox-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log.info("debootstrap %s from %s (about a minute) ...", suite, mirror)
        command = [
            debootstrap, "--variant=minbase", "--include=python3",
            suite, str(rootfs), mirror,
        ]  # fmt: skip
        for line in _stream(command):
            if line.startswith(_NOISY_DEBOOTSTRAP_LINES):
                continue  # hundreds of these; the stage lines are progress enough
            log.info("  %s", line)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        log.info("importing the root filesystem as %s ...", bootstrap_base_tag(suite))
        client.api.import_image_from_file(str(tarball), repository=BOOTSTRAP_REPOSITORY, tag=suite)


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line format)."""
    files = [*sorted(sources.glob("sources.list.d/*")), sources / "sources.list"]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for match in re.finditer(r"^(?:URIs:|deb)\s+(\S+)", text, re.MULTILINE):
            uri = match.group(1).rstrip("/")
            if uri.endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def _require_debootstrap(suite: str) -> str:
    found = shutil.which("debootstrap") or shutil.which("/usr/sbin/debootstrap")
    if not found and shutil.which("apt-get"):
        log.info("installing debootstrap ...")
        subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], check=False)
        found = shutil.which("debootstrap") or shutil.which("/usr/sbin/debootstrap")
    if not found:
        raise ImageBuildError(
            "no registry answers and debootstrap is missing: install debootstrap "
            "(apt-get install debootstrap, as root) or make a registry with "
            f"python:*-slim-{suite} reachable"
        )
    if not (DEBOOTSTRAP_SCRIPTS / suite).exists():  # bookworm's 1.0.128 knows trixie already
        raise ImageBuildError(
            f"this debootstrap does not know Debian {suite} (no {DEBOOTSTRAP_SCRIPTS / suite}): "
            "install a newer debootstrap, or make a registry with "
            f"python:*-slim-{suite} reachable"
        )
    return found


def _stream(command: list[str]) -> Iterator[str]:
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        yield from (line.rstrip() for line in proc.stdout)
    if proc.returncode != 0:
        raise ImageBuildError(f"{command[0]} failed with exit code {proc.returncode}")


def _image_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
