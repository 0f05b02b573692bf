"""What the model is told about the sandbox it runs code in: the tools' shared description,
built from the settings, so every number in it is the one that applies."""

from __future__ import annotations

from agent_sandbox.config import Settings
from agent_sandbox.images.profiles import get_profile


def describe_environment(settings: Settings) -> str:
    """The sandbox, its profiles and packages, its limits and what a result holds."""
    limits = settings.limits
    results = settings.results
    network = (
        f"only the operator's Docker network {settings.engine.network!r}"
        if settings.engine.network
        else "NO network access"
    )
    offered = [get_profile(name) for name in settings.engine.profiles]
    profiles = "; ".join(profile.describe() for profile in offered)
    versions = sorted({profile.python for profile in offered}, key=lambda v: tuple(map(int, v.split("."))))
    python = (
        f"CPython {versions[0]}"
        if len(versions) == 1
        else f"CPython {', '.join(versions[:-1])} or {versions[-1]} (the image profile decides which)"
    )
    packages = settings.packages
    if not packages.enabled:
        requirements_help = "Installing other packages is turned off on this server."
    else:
        allowed = f" Allowed packages: {', '.join(packages.allow)}." if packages.allow else ""
        requirements_help = (
            "Other packages: list them in `requirements` (e.g. ['six', 'pandas>=2']; wheels "
            "only, fetched by the host, installed offline into /packages before the program "
            f"starts, at most {packages.max_wheels} wheels / {packages.max_total_mib} MiB)." + allowed
        )
        if packages.auto_install:
            requirements_help += (
                " A run that fails on a missing module is run once more with the package that "
                "provides it (install.auto says so); better name it in `requirements` yourself."
            )
    names = (
        " and, for run_python, the global names (variables, functions, classes, imports)"
        if settings.workspaces.max_state_kib
        else ""
    )
    shared_memory = (
        f", with {limits.shm_mib} MiB of shared memory (/dev/shm) for multiprocessing"
        if limits.shm_mib
        else "; there is no shared memory (/dev/shm): multiprocessing cannot work, use threads"
    )
    return (
        f"Runs in a fresh, single-use Linux container with {python}, {network}, as an "
        f"unprivileged user. Image profiles (`image`; default '{settings.engine.profile}'): "
        f"{profiles}. {requirements_help} The working "
        f"folder is /work ({limits.work_mib} MiB, writable; /tmp too, {limits.tmp_mib} MiB)"
        f"{shared_memory}; everything else is read-only and nothing persists after the call, unless "
        f"you pass a workspace (workspace_create): then /work{names} carries to the next call. Limits: "
        f"{limits.memory_mib} MiB of memory (files in /work, /tmp and /dev/shm count), {limits.cpus:g} CPU, "
        f"{limits.pids} processes and threads, {limits.timeout_s:g} s by default (timeout_s up to "
        f"{limits.max_timeout_s:g} s), {limits.output_capture_kib} KiB of stdout and of stderr "
        f"kept (the start and the end, with a line saying how much was cut between). The result "
        f"has exit_code, stdout, stderr, timed_out, oom_killed, violations and notes that say "
        f"which limit was hit and what to change, error (the uncaught exception's type, message "
        f"and line) and artifacts: files the program wrote under /work come back (images as "
        f"pictures you can see; up to {results.max_artifacts} files, {results.max_artifact_kib} "
        f"KiB). A program that fails is not a tool error: read "
        f"exit_code, error and stderr."
    )
