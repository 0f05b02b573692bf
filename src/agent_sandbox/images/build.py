"""``agent-sandbox image build``: build and tag the sandbox images, one per profile.

A profile's Dockerfile starts ``FROM`` the image of the profile it builds on, or, for the first,
a public Python image when a registry answers. Where none does (as on machines without registry
access), a Debian root filesystem is bootstrapped with ``debootstrap`` and ``docker import``-ed as
the base instead. Packages never come from the network inside a build: the host resolves them to
wheels (the same cache as per-run requirements) and the build context carries them in ``wheels/``.
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

log = logging.getLogger(__name__)

PUBLIC_BASE = "python:3.11-slim-bookworm"
BOOTSTRAP_BASE = "agent-sandbox-base:bookworm"
DEBIAN_SUITE = "bookworm"
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
        base = _choose_base(client)
        requirements = [INSTALLER_REQUIREMENT, STATE_REQUIREMENT]
    else:
        base = f"{tag.rpartition(':')[0]}:{profile.base_profile}"
        if not _image_exists(client, base):
            build_image(client, get_profile(profile.base_profile), wheels, base)
        requirements = profile.packages()
    with tempfile.TemporaryDirectory(prefix="agent-sandbox-build-") as tmp:
        context = Path(tmp) / "context"
        shutil.copytree(profile.folder, context)
        _add_wheels(context / "wheels", requirements, wheels)
        log.info("building %s from %s (profile %s)", tag, base, profile.name)
        image_id = _docker_build(client, context, tag, base)
    log.info("built %s (%s)", tag, image_id[:19])
    return image_id


def _add_wheels(folder: Path, requirements: list[str], wheels: WheelResolver) -> None:
    """Resolve ``requirements`` to wheels on the host and put them in the build context."""
    log.info("resolving %d requirement(s) to wheels on the host ...", len(requirements))
    try:
        resolution = anyio.run(wheels.resolve, parse_requirements(requirements))
    except PackageRefused as exc:
        raise ImageBuildError(f"the image's packages cannot be fetched: {exc}") from None
    folder.mkdir()
    for wheel in resolution.wheels:
        link_or_copy(wheel.path, folder / wheel.filename)
    size_mib = sum(wheel.size for wheel in resolution.wheels) / (1024 * 1024)
    source = "from the cache" if resolution.from_cache else f"in {resolution.seconds:.1f} s"
    log.info("%d wheel(s), %.0f MiB, %s", len(resolution.wheels), size_mib, source)


def _docker_build(client: docker.DockerClient, context: Path, tag: str, base: str) -> str:
    image_id = ""
    try:
        for chunk in client.api.build(
            path=str(context),
            tag=tag,
            buildargs={"BASE": base},
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


def _choose_base(client: docker.DockerClient) -> str:
    """The public base if it is here or can be pulled, else the bootstrapped Debian base."""
    for candidate in (PUBLIC_BASE, BOOTSTRAP_BASE):
        if _image_exists(client, candidate):
            return candidate
    log.info("pulling %s ...", PUBLIC_BASE)
    try:
        client.images.pull(PUBLIC_BASE)
        return PUBLIC_BASE
    except docker.errors.APIError as exc:
        log.info("no registry answers (%s); bootstrapping Debian instead", _first_line(exc))
    bootstrap_base(client)
    return BOOTSTRAP_BASE


def bootstrap_base(client: docker.DockerClient, mirror: str | None = None) -> None:
    """debootstrap a minimal Debian with full python3 and import it as ``BOOTSTRAP_BASE``."""
    debootstrap = _require_debootstrap()
    mirror = mirror or debian_mirror()
    with tempfile.TemporaryDirectory(prefix="agent-sandbox-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log.info("debootstrap %s from %s (about a minute) ...", DEBIAN_SUITE, mirror)
        command = [
            debootstrap, "--variant=minbase", "--include=python3",
            DEBIAN_SUITE, str(rootfs), mirror,
        ]  # fmt: skip
        for line in _stream(command):
            if line.startswith(_NOISY_DEBOOTSTRAP_LINES):
                continue  # hundreds of these; the stage lines are progress enough
            log.info("  %s", line)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        log.info("importing the root filesystem as %s ...", BOOTSTRAP_BASE)
        repository, tag = BOOTSTRAP_BASE.split(":")
        client.api.import_image_from_file(str(tarball), repository=repository, tag=tag)


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


def _require_debootstrap() -> str:
    found = shutil.which("debootstrap") or shutil.which("/usr/sbin/debootstrap")
    if found:
        return found
    if shutil.which("apt-get"):
        log.info("installing debootstrap ...")
        subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], check=False)
        found = shutil.which("debootstrap") or shutil.which("/usr/sbin/debootstrap")
        if found:
            return found
    raise ImageBuildError(
        "no registry answers and debootstrap is missing: install debootstrap "
        "(apt-get install debootstrap, as root) or make a registry with "
        f"{PUBLIC_BASE} reachable"
    )


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
