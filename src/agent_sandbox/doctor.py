"""``agent-sandbox doctor``: check the config, the engine, its runtime, the images and a live
run, and say what to fix for each thing that is wrong."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any, Literal

import anyio

from agent_sandbox.config import GVISOR, Settings
from agent_sandbox.engine.base import Engine, RuntimeState
from agent_sandbox.errors import EngineError, ImageMissing
from agent_sandbox.images.profiles import get_profile
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


def checks(settings: Settings, config_source: str, engine: Engine | None = None) -> Iterator[Check]:
    """Every check in order, each as soon as it is done; later ones need the earlier ones. The
    engine is the configured one unless given."""
    yield _config(settings, config_source)
    sandbox = Sandbox(settings, engine)
    health = sandbox.engine_health()
    if health.version is None or health.runtime is None:  # no engine: nothing else can be known
        yield Check("FAIL", "engine", "; ".join(str(problem) for problem in health.problems))
        return
    yield Check("ok", "engine", health.description)
    if settings.engine.backend == "kubernetes":
        yield _runtime(health.runtime, "")  # the runtime class is a problem below if missing
        for problem in health.problems:
            if not isinstance(problem, ImageMissing):
                yield Check("FAIL", "cluster", str(problem))
    else:
        yield _runtime(health.runtime, settings.engine.runtime)
    for image in health.images:
        if image.present:
            known = [f"{image.size_bytes / 1e6:.0f} MB" if image.size_bytes else "", image.created or ""]
            if image.created:
                known[1] = f"built {image.created} UTC"
            about = ", ".join(part for part in known if part)
            yield Check("ok", "image", f"{image.name} ({about})" if about else image.name)
        else:
            yield Check("FAIL", "image", image.problem or f"{image.name} is missing")
    default_image = settings.engine.image_of(settings.engine.profile)
    if not any(image.present for image in health.images if image.name == default_image):
        yield Check("skip", "trial run", f"not tried: the default profile's image {default_image} is missing")
        return
    yield from _trial_run(sandbox, settings)


def _config(settings: Settings, source: str) -> Check:
    profiles = ", ".join(f"{name} (CPython {get_profile(name).python})" for name in settings.engine.profiles)
    found = f"{source}; profiles {profiles}, default {settings.engine.profile}"
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


def _runtime(runtime: RuntimeState, configured: str) -> Check:
    """The runtime sandboxes run under (``configured``, else the engine's default), and whether
    the engine can enforce our limits."""
    which = f"engine.runtime; default {runtime.default}; " if configured else ""
    found = f"{runtime.used} ({which}offered: {', '.join(runtime.offered)}); {runtime.details}"
    if configured and configured not in runtime.offered:
        return Check(
            "FAIL", "runtime", f"{found}; engine.runtime {configured!r} is not offered: {runtime.fix}"
        )
    if runtime.weaknesses:
        return Check("FAIL", "runtime", f"{found}; {runtime.weaknesses[0]}")
    return Check("ok", "runtime", found)


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
    if report["interfaces"] != ["lo"] and settings.engine.backend == "kubernetes":
        network = (
            f"interfaces {', '.join(report['interfaces'])} (the deny-all NetworkPolicy must be enforced)"
        )
    # Under gVisor the filter and the flag guard its kernel, where the probe cannot see them.
    kernel = "gVisor's kernel" if settings.engine.runtime == GVISOR else "seccomp, no-new-privileges"
    who = f"uid {report['uid']}"
    host_uid = host_id(report["uid"], report.get("uid_map", []))
    if host_uid is not None and host_uid != report["uid"]:
        who += f" (host uid {host_uid}: user namespace remapped)"
    scratch = "noexec /work and /tmp"
    if settings.engine.backend == "kubernetes":
        scratch = "/work and /tmp not noexec (a pod's emptyDir cannot be)"
    return f"{who}, no capabilities, {kernel}, {network}, read-only root, {scratch}, no runtime socket"


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
    # A pod has the interfaces its cluster's CNI gives it: there the NetworkPolicy is the wall.
    kubernetes = settings.engine.backend == "kubernetes"
    if not settings.engine.network and not kubernetes and report["interfaces"] != ["lo"]:
        problems.append(f"the sandbox has network interfaces: {report['interfaces']}")
    if report["root_write"] != "EROFS":
        problems.append("the root filesystem is writable")
    # gVisor enforces noexec but does not list nosuid among a mount's options; a pod's emptyDir
    # has neither, and nothing in a pod spec can ask for them (docs/kubernetes.md).
    wanted = {"noexec"} if settings.engine.runtime == GVISOR else {"noexec", "nosuid"}
    if settings.engine.backend == "kubernetes":
        wanted = set()
    for mount in ("work_mount", "tmp_mount"):
        if not wanted <= set(report[mount]):
            problems.append(f"{mount.split('_')[0]} is not {','.join(sorted(wanted))}")
    if report["runtime_sockets"]:
        problems.append(f"a container runtime socket is reachable: {report['runtime_sockets']}")
    return problems
