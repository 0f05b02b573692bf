"""``agent-sandbox doctor``: check the config, the engine, its runtime, the images and a live
run, and say what to fix for each thing that is wrong."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Generator, Iterator
from typing import Any, Literal

import anyio
import docker
import requests

from agent_sandbox.config import GVISOR, Settings
from agent_sandbox.engine.docker import DockerEngine, EngineError, unreachable
from agent_sandbox.models import ProjectFile, RunRequest
from agent_sandbox.probes import POSTURE_PROBE
from agent_sandbox.sandbox import Sandbox

Status = Literal["ok", "warn", "FAIL", "skip"]


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, how it went, what was found or what to do."""

    status: Status
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status:<5} {self.subject:<10} {self.detail}"


def checks(settings: Settings, config_source: str) -> Iterator[Check]:
    """Every check in order, each as soon as it is done; later ones need the earlier ones."""
    yield _config(settings, config_source)
    engine = DockerEngine(settings.engine)
    try:
        version = engine.version()
        info: dict[str, Any] = engine.client.info()
    except EngineError as exc:
        yield Check("FAIL", "engine", str(exc))
        return
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        yield Check("FAIL", "engine", unreachable(exc))  # it went away between the two calls
        return
    where = settings.engine.docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    yield Check("ok", "engine", f"Docker {version} at {where}")
    yield _runtime(info, settings.engine.runtime)
    present = yield from _images(engine, settings)
    default_image = settings.engine.image_of(settings.engine.profile)
    if default_image not in present:
        yield Check("skip", "trial run", f"not tried: the default profile's image {default_image} is missing")
        return
    yield from _trial_run(Sandbox(settings, engine), settings)


def _config(settings: Settings, source: str) -> Check:
    found = f"{source}; profiles {', '.join(settings.engine.profiles)}, default {settings.engine.profile}"
    limits = settings.limits
    if limits.files_in_memory_mib >= limits.memory_mib:
        return Check(
            "warn",
            "config",
            f"{found}; limits.work_mib + tmp_mib + shm_mib ({limits.files_in_memory_mib} MiB) do not fit "
            f"in limits.memory_mib ({limits.memory_mib} MiB): files there are memory, so a program "
            "that fills them is killed for memory instead of told the disk is full; lower them",
        )
    if settings.engine.network:
        return Check(
            "warn", "config", f"{found}; engine.network is on: sandboxed programs can reach networks"
        )
    return Check("ok", "config", found)


def _runtime(info: dict[str, Any], configured: str) -> Check:
    """The runtime sandboxes run under (``configured``, else the engine's default), and whether
    the engine can enforce our limits."""
    default = info.get("DefaultRuntime", "?")
    runtimes = sorted(info.get("Runtimes") or {})
    offered = ", ".join(runtimes)
    security = ", ".join(
        option.split(",")[0].removeprefix("name=") for option in info.get("SecurityOptions", [])
    )
    used = f"{configured} (engine.runtime; default {default}; " if configured else f"{default} ("
    found = f"{used}offered: {offered}); cgroup v{info.get('CgroupVersion', '?')}; security: {security}"
    if configured and configured not in runtimes:
        return Check(
            "FAIL",
            "runtime",
            f"{found}; engine.runtime {configured!r} is not offered: register it in /etc/docker/daemon.json "
            "(scripts/ensure-engine.sh does for runsc) and reload dockerd",
        )
    missing = [name for name, key in (("memory", "MemoryLimit"), ("pids", "PidsLimit")) if not info.get(key)]
    if missing:
        return Check(
            "FAIL",
            "runtime",
            f"{found}; the engine cannot enforce {' and '.join(missing)} limits: enable those cgroup "
            "controllers in the kernel (e.g. cgroup_enable=memory on its command line)",
        )
    if "seccomp" not in security:
        return Check("FAIL", "runtime", f"{found}; no seccomp: use a Docker built with seccomp support")
    return Check("ok", "runtime", found)


def _images(engine: DockerEngine, settings: Settings) -> Generator[Check, None, set[str]]:
    """One line per offered profile; returns the images that are present."""
    present = set()
    for profile in settings.engine.profiles:
        image = settings.engine.image_of(profile)
        try:
            attrs = engine.image_attrs(image)
        except EngineError as exc:
            yield Check("FAIL", "image", str(exc))
            continue
        present.add(image)
        created = datetime.datetime.fromisoformat(attrs["Created"][:19]).strftime("%Y-%m-%d %H:%M")
        yield Check("ok", "image", f"{image} ({attrs['Size'] / 1e6:.0f} MB, built {created} UTC)")
    return present


def _trial_run(sandbox: Sandbox, settings: Settings) -> Iterator[Check]:
    """Run the posture probe in a real sandbox and judge what it reports."""
    try:
        result = anyio.run(
            sandbox.run, RunRequest(files=[ProjectFile(path="main.py", content=POSTURE_PROBE)])
        )
    except EngineError as exc:
        yield Check("FAIL", "trial run", str(exc))
        return
    if result.exit_code != 0:
        yield Check("FAIL", "trial run", f"exit {result.exit_code}: {result.stderr[-500:]}")
        return
    try:
        report = json.loads(result.stdout)
    except ValueError:
        yield Check("FAIL", "trial run", f"the posture probe printed no report: {result.stdout[-500:]!r}")
        return
    yield Check("ok", "trial run", f"the posture probe ran in {result.duration_s:.2f} s")
    problems = posture_problems(report, settings)
    for problem in problems:
        yield Check("FAIL", "posture", problem)
    if not problems:
        yield Check("ok", "posture", posture_summary(report, settings))


def posture_summary(report: dict[str, Any], settings: Settings) -> str:
    """One line of what the probe found in a sandbox with no problems."""
    network = "no network" if not settings.engine.network else "network on (engine.network)"
    # Under gVisor the filter and the flag guard its kernel, where the probe cannot see them.
    kernel = "gVisor's kernel" if settings.engine.runtime == GVISOR else "seccomp, no-new-privileges"
    who = f"uid {report['uid']}"
    host_uid = host_id(report["uid"], report.get("uid_map", []))
    if host_uid is not None and host_uid != report["uid"]:
        who += f" (host uid {host_uid}: user namespace remapped)"
    return (
        f"{who}, no capabilities, {kernel}, {network}, read-only root, noexec /work and /tmp, "
        "no runtime socket"
    )


def host_id(inside: int, id_map: list[list[int]]) -> int | None:
    """The host id ``inside`` maps to through a /proc/PID/uid_map, None if it is unmapped."""
    for start, outside, count in id_map:
        if start <= inside < start + count:
            return outside + inside - start
    return None


def posture_problems(report: dict[str, Any], settings: Settings) -> list[str]:
    """What a live posture probe shows that the sandbox promises not to allow."""
    problems = []
    if report["uid"] == 0 or report["euid"] == 0:
        problems.append("the program runs as root")
    if any(mask.strip("0") for mask in report["capabilities"].values()):
        problems.append(f"the program has capabilities: {report['capabilities']}")
    # gVisor's /proc shows neither: its seccomp filter guards the sentry, on the host's side.
    if settings.engine.runtime != GVISOR and (report["no_new_privs"] != "1" or report["seccomp"] != "2"):
        problems.append("no-new-privileges or the seccomp filter is missing")
    if not settings.engine.network and report["interfaces"] != ["lo"]:
        problems.append(f"the sandbox has network interfaces: {report['interfaces']}")
    if report["root_write"] != "EROFS":
        problems.append("the root filesystem is writable")
    # gVisor enforces noexec but does not list nosuid among a mount's options.
    wanted = {"noexec"} if settings.engine.runtime == GVISOR else {"noexec", "nosuid"}
    for mount in ("work_mount", "tmp_mount"):
        if not wanted <= set(report[mount]):
            problems.append(f"{mount.split('_')[0]} is not {','.join(sorted(wanted))}")
    if report["runtime_sockets"]:
        problems.append(f"a container runtime socket is reachable: {report['runtime_sockets']}")
    return problems
