"""The one service every front end calls: validate a request, run it, judge the outcome."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import math
import unicodedata
from types import TracebackType

import anyio.to_thread
import docker.errors
from packaging.requirements import Requirement

from agent_sandbox.admission import Admission, Caller, QueuedCallback
from agent_sandbox.archive import ArchiveError, build_archive, check_path, decode_content
from agent_sandbox.artifacts import collect_artifacts
from agent_sandbox.config import LimitSettings, Settings
from agent_sandbox.engine.docker import DockerEngine, OutputCallback, ProgressCallback
from agent_sandbox.engine.pool import WarmPool
from agent_sandbox.engine.spec import (
    ContainerShape,
    InstallSpec,
    Outcome,
    PackageMount,
    ResultCaps,
    RunSpec,
)
from agent_sandbox.filenames import shown_name
from agent_sandbox.models import (
    InstallReport,
    LimitRequest,
    Limits,
    ProjectFile,
    RunRequest,
    RunResult,
    WorkspaceReport,
)
from agent_sandbox.packages.policy import check_requested, check_resolved
from agent_sandbox.packages.requirements import (
    REQUIREMENTS_FILE,
    PackageRefused,
    parse_requirements,
    requirements_file,
)
from agent_sandbox.packages.resolver import Resolution, WheelResolver
from agent_sandbox.tracebacks import parse_error
from agent_sandbox.verdict import judge
from agent_sandbox.workspaces import WorkspaceError, WorkspaceStore

log = logging.getLogger(__name__)
LOCAL = Caller()  # a caller of this process's own: the command line, a script, a test


class RequestError(ValueError):
    """The request was refused; the message names what is wrong and what to do instead."""


def resolve_limits(asked: LimitRequest, configured: LimitSettings) -> Limits:
    """The limits a run gets: the configured ones, lowered where the caller asked.

    Time may also be raised, up to ``max_timeout_s``; nothing else may exceed its default. Less
    memory shrinks /work, /tmp and /dev/shm in the same proportion: they are memory, and must
    still fit in it for a full disk to read as one (the result's ``limits`` shows the sizes).
    """
    ceilings: dict[str, float] = {
        "timeout_s": configured.max_timeout_s,
        "memory_mib": configured.memory_mib,
        "cpus": configured.cpus,
        "pids": configured.pids,
    }
    values = {name: getattr(configured, name) for name in Limits.model_fields}
    for name, ceiling in ceilings.items():
        wanted = getattr(asked, name)
        if wanted is None:
            continue
        if wanted > ceiling:
            raise RequestError(
                f"{name} {wanted:g} is above the maximum of {ceiling:g}; ask for {ceiling:g} or less"
            )
        values[name] = wanted
    share = values["memory_mib"] / configured.memory_mib
    if share < 1:
        for name in ("work_mib", "tmp_mib", "shm_mib"):
            values[name] = math.ceil(values[name] * share)
    return Limits(**values)


class Sandbox:
    """Runs ``RunRequest``s in the sandbox and returns ``RunResult``s.

    Used as ``async with``, it also keeps the warm pool (``engine.pool_size``) for as long as the
    block lasts; without it, every run starts a container cold.
    """

    def __init__(self, settings: Settings, engine: DockerEngine | None = None):
        self.settings = settings
        self.engine = engine or DockerEngine(settings.engine)
        self.pool: WarmPool | None = None
        self.admission = Admission(settings.engine.max_concurrent_runs, settings.engine.max_queued_runs)
        self.wheels = WheelResolver.from_settings(settings.packages)
        self.workspaces = WorkspaceStore(settings.workspaces, max_members=2 * settings.files.max_files)

    def default_limits(self) -> Limits:
        """The limits of a run that asks for nothing."""
        return resolve_limits(LimitRequest(), self.settings.limits)

    async def __aenter__(self) -> Sandbox:
        engine_settings = self.settings.engine
        if engine_settings.pool_size > 0:
            image = engine_settings.image_of(engine_settings.profile)
            shape = ContainerShape.of(
                image, self.default_limits(), engine_settings.network, runtime=engine_settings.runtime
            )
            pool = WarmPool(self.engine, shape, engine_settings.pool_size, engine_settings.pool_max_idle_s)
            self.pool = await pool.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.__aexit__(exc_type, exc, traceback)

    def start(self) -> str:
        """Check the engine and every profile's image, and remove containers and wheel folders a
        crashed process left behind.

        Returns the engine version; raises ``EngineError`` with a fix when something is missing.
        """
        version = ""
        for name in self.settings.engine.profiles:
            version = self.engine.check(self.settings.engine.image_of(name))
        self.engine.require_runtime(self.settings.engine.runtime)
        removed = self.engine.remove_leftovers(older_than_s=self.longest_container_life_s())
        if removed:
            log.info("removed %d container(s) left behind by an earlier process", removed)
        self.wheels.cache.remove_stale(older_than_s=self.longest_container_life_s())
        return version

    def longest_container_life_s(self) -> float:
        """How long a container of ours can legitimately exist: a warm wait or an install, then a
        whole run."""
        slack_s = 60.0
        before_run_s = max(self.settings.engine.pool_max_idle_s, self.settings.packages.install_timeout_s)
        return before_run_s + self.settings.limits.max_timeout_s + slack_s

    def close(self) -> int:
        """Remove any container this process still has (runs cut short by shutdown)."""
        removed = 0
        for container in self.engine.our_containers():
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)
                removed += 1
        return removed

    def prepare(self, request: RunRequest) -> RunSpec:
        """Validate ``request`` and turn it into a container spec, or raise ``RequestError``."""
        try:
            check_path(request.entrypoint, "entrypoint")
            archive = build_archive(request.files, self.settings.files)
        except ArchiveError as exc:
            raise RequestError(str(exc)) from None
        if request.entrypoint not in archive.paths:
            raise RequestError(
                f"entrypoint {request.entrypoint!r} is not one of the files sent "
                f"({', '.join(sorted(archive.paths)[:10])}); name one of them"
            )
        stdin = request.stdin.encode() if request.stdin is not None else None
        max_stdin = self.settings.files.max_stdin_kib * 1024
        if stdin is not None and len(stdin) > max_stdin:
            raise RequestError(
                f"stdin is {len(stdin)} bytes, over the {self.settings.files.max_stdin_kib} KiB "
                "limit; send the data as a file instead and read it from /work"
            )
        return RunSpec(
            image=self.settings.engine.image_of(self.profile_of(request)),
            archive=archive.data,
            entrypoint=request.entrypoint,
            args=tuple(request.args),
            stdin=stdin,
            env=dict(request.env),
            limits=resolve_limits(request.limits, self.settings.limits),
            network=self.settings.engine.network,
            runtime=self.settings.engine.runtime,
            results=self.result_caps(request),
        )

    def result_caps(self, request: RunRequest) -> ResultCaps:
        """What the launcher sends back for ``request`` besides its output."""
        results = self.settings.results
        return ResultCaps(
            max_files=results.max_artifacts,
            max_bytes=results.max_artifact_kib * 1024,
            max_listed=results.max_artifacts,
            notebook=request.notebook,
            return_value_chars=results.max_return_value_chars if request.return_last_expression else 0,
            snapshot_files=self.settings.files.max_files if request.workspace else 0,
            snapshot_bytes=self.snapshot_kib() * 1024 if request.workspace else 0,
        )

    def snapshot_kib(self) -> int:
        """The most a workspace may hold: its cap, and what one call may send back in."""
        return min(self.settings.workspaces.max_kib, self.settings.files.max_total_kib)

    def profile_of(self, request: RunRequest) -> str:
        """The image profile ``request`` runs in, if the server offers it."""
        profile = request.profile or self.settings.engine.profile
        if profile not in self.settings.engine.profiles:
            raise RequestError(
                f"image profile {profile!r} is not offered here; use one of "
                f"{', '.join(self.settings.engine.profiles)}"
            )
        return profile

    def requirements(self, request: RunRequest) -> list[Requirement]:
        """The packages ``request`` needs (its ``requirements`` and any top-level
        requirements.txt), checked against the policy; ``RequestError`` names a refused one."""
        specs = list(request.requirements)
        try:
            for index, file in enumerate(request.files):
                if file.path == REQUIREMENTS_FILE:
                    text = decode_content(file, f"files[{index}] ({file.path!r})")
                    specs += requirements_file(text.decode("utf-8", errors="replace"))
            requirements = parse_requirements(specs)
            check_requested(requirements, self.settings.packages)
        except (PackageRefused, ArchiveError) as exc:
            raise RequestError(str(exc)) from None
        return requirements

    async def resolve(self, requirements: list[Requirement]) -> Resolution:
        """Wheels for ``requirements``, from the host's cache or downloaded, within the policy."""
        try:
            resolution = await self.wheels.resolve(requirements)
            check_resolved(resolution.wheels, self.settings.packages)
        except PackageRefused as exc:
            raise RequestError(str(exc)) from None
        return resolution

    async def run(
        self,
        request: RunRequest,
        on_progress: ProgressCallback | None = None,
        caller: Caller = LOCAL,
        on_output: OutputCallback | None = None,
    ) -> RunResult:
        """Run ``request`` in a fresh container; refusals raise ``RequestError``, a full server
        ``Busy``, infrastructure failures ``EngineError``. ``caller`` owns the workspaces it
        uses and waits within its share; ``on_output`` sees the program's output as it comes."""
        requirements = self.requirements(request)  # the caller's own: never a workspace's file
        if request.workspace is None:
            result, _ = await self._execute(request, requirements, caller, on_progress, on_output)
            return result
        workspace = request.workspace
        try:
            with self.workspaces.in_use(workspace, caller.id):
                stored = await anyio.to_thread.run_sync(self.workspaces.files, workspace, caller.id)
                request = self._on_top_of(workspace, stored, request)
                result, outcome = await self._execute(request, requirements, caller, on_progress, on_output)
                report = await anyio.to_thread.run_sync(self._save, workspace, caller.id, outcome)
        except WorkspaceError as exc:
            raise RequestError(str(exc)) from None
        notes = result.notes + ([f"Workspace {workspace}: {report.note}"] if report.note else [])
        return result.model_copy(update={"workspace": report, "notes": notes})

    def _on_top_of(self, workspace: str, stored: dict[str, bytes], request: RunRequest) -> RunRequest:
        """``request`` with the workspace's files added under its own (the caller's files win),
        refused with a workspace's reason when the two together are over the files limits."""
        limits = self.settings.files
        sent = {unicodedata.normalize("NFC", file.path) for file in request.files}
        kept = {path: data for path, data in stored.items() if unicodedata.normalize("NFC", path) not in sent}
        make_room = (
            "make room first: run a program in the workspace that deletes what you no longer need, "
            "sent under the name of a file the workspace already holds (it replaces that file), "
            "or start a new workspace"
        )
        if len(kept) + len(request.files) > limits.max_files:
            held = {unicodedata.normalize("NFC", path) for path in stored}
            added = [
                file.path for file in request.files if unicodedata.normalize("NFC", file.path) not in held
            ]
            named = ", ".join(repr(path) for path in added[:5]) + (", ..." if len(added) > 5 else "")
            adds = f" and this call adds {len(added)} ({named})" if added else ""
            raise RequestError(
                f"workspace {workspace} holds {len(stored)} files{adds}, but a run starts with at "
                f"most {limits.max_files} files; {make_room}"
            )
        kept_bytes = sum(map(len, kept.values()))
        if kept_bytes + sum(map(_decoded_size, request.files)) > limits.max_total_kib * 1024:
            raise RequestError(
                f"workspace {workspace} holds {kept_bytes // 1024} KiB besides the files this call "
                f"sends, and together they are over the {limits.max_total_kib} KiB a run starts "
                f"with; {make_room}"
            )
        restored = [
            ProjectFile(path=path, content=base64.b64encode(data).decode(), encoding="base64")
            for path, data in kept.items()
        ]
        return request.model_copy(update={"files": restored + list(request.files)})

    def _save(self, workspace: str, owner: str, outcome: Outcome) -> WorkspaceReport:
        """Keep /work as the workspace's state if every file in it can be kept; else keep the
        previous state and say why. A workspace is saved whole or not at all."""
        snapshot = outcome.snapshot
        why_not = _unsaveable(outcome)
        if snapshot is not None and why_not is None:
            contents = dict(snapshot.contents())
            try:
                self.workspaces.save(workspace, owner, contents, self.settings.files)
            except WorkspaceError as exc:
                why_not = str(exc)
            else:
                size = sum(map(len, contents.values()))
                return WorkspaceReport(id=workspace, saved=True, files=len(contents), bytes=size)
        try:
            kept = self.workspaces.describe(workspace, owner).files
        except WorkspaceError:
            kept = {}  # deleted or expired meanwhile
        return WorkspaceReport(
            id=workspace,
            saved=False,
            files=len(kept),
            bytes=sum(kept.values()),
            note=f"not saved, the previous state is kept: {why_not}",
        )

    async def _execute(
        self,
        request: RunRequest,
        requirements: list[Requirement],
        caller: Caller,
        on_progress: ProgressCallback | None,
        on_output: OutputCallback | None,
    ) -> tuple[RunResult, Outcome]:
        """Run ``request`` once ``caller`` is admitted; its result, and the raw outcome (which
        holds all of /work when it is a workspace run)."""
        spec = self.prepare(request)
        resolution = None
        with contextlib.ExitStack() as stack:
            if requirements:
                if on_progress is not None:
                    await on_progress("resolving")
                resolution = await self.resolve(requirements)
            if resolution is not None and resolution.wheels:  # markers may leave nothing to install
                folder = stack.enter_context(self.wheels.cache.staged(resolution.wheels))
                mount = PackageMount(str(folder), self.settings.packages.install_mib)
                wheels = tuple(wheel.filename for wheel in resolution.wheels)
                install = InstallSpec(mount, wheels, self.settings.packages.install_timeout_s)
                spec = dataclasses.replace(spec, install=install)
            async with self.admission.admit(caller, _queued_reporter(on_progress)):
                outcome = await self.engine.run(spec, on_progress, on_output)
        stderr = outcome.stderr.decode("utf-8", errors="replace")
        error = parse_error(stderr) if outcome.exit_code == 1 else None  # Python's code for it
        verdict = judge(
            outcome,
            spec.limits,
            max_timeout_s=self.settings.limits.max_timeout_s,
            had_stdin=request.stdin is not None,
            error=error,
        )
        artifacts, artifact_notes = collect_artifacts(outcome.files, self.settings.results)
        result = RunResult(
            exit_code=outcome.exit_code,
            stdout=outcome.stdout.decode("utf-8", errors="replace"),
            stderr=stderr,
            stdout_truncated=outcome.stdout_truncated,
            stderr_truncated=outcome.stderr_truncated,
            stdout_bytes=outcome.stdout_bytes,
            stderr_bytes=outcome.stderr_bytes,
            duration_s=outcome.duration_s,
            timed_out=outcome.timed_out,
            oom_killed=outcome.oom_killed,
            warm_start=outcome.warm_start,
            violations=verdict.violations,
            notes=verdict.notes + artifact_notes,
            limits=spec.limits,
            profile=self.profile_of(request),
            install=_install_report(resolution, outcome),
            return_value=_capped(outcome.return_value, spec.results.return_value_chars),
            error=error,
            artifacts=artifacts,
        )
        return result, outcome


def _unsaveable(outcome: Outcome) -> str | None:
    """Why /work at the end of the run cannot become the workspace's state, if it cannot: it
    did not come back, or some of its files could not (saving the rest would lose them)."""
    snapshot = outcome.snapshot
    if snapshot is None:
        if outcome.oom_killed:
            return (
                "the sandbox ran out of memory before it could hand back /work (files there count toward it)"
            )
        if outcome.output_killed:
            return "the run was stopped for its output before it could hand back /work"
        return "the run ended without handing back /work (its launcher was killed, or the engine stopped it)"
    if not snapshot.files and snapshot.omitted and snapshot.omitted[0]["path"] == ".":
        return str(snapshot.omitted[0]["reason"])  # /work was over the workspace's caps
    if snapshot.omitted:
        lost = "; ".join(f"'{shown_name(str(e['path']))}': {e['reason']}" for e in snapshot.omitted[:5])
        more = f" (and {len(snapshot.omitted) - 5} more)" if len(snapshot.omitted) > 5 else ""
        return f"these could not be kept, and saving without them would lose them: {lost}{more}"
    return None


def _decoded_size(file: ProjectFile) -> int:
    """How many bytes ``file`` holds, without decoding it (base64 that is not valid is refused
    later, by the archive, with its own reason)."""
    if file.encoding == "base64":
        return len(file.content) * 3 // 4 - file.content[-2:].count("=")
    return len(file.content.encode("utf-8", "surrogatepass"))


def _queued_reporter(on_progress: ProgressCallback | None) -> QueuedCallback | None:
    """Tell ``on_progress`` how many wait ahead while a run waits for a slot."""
    if on_progress is None:
        return None

    async def report(ahead: int) -> None:
        await on_progress("queued", f"{ahead} ahead")

    return report


def _capped(value: str | None, max_chars: int) -> str | None:
    return value[:max_chars] if value is not None and max_chars else None


def _install_report(resolution: Resolution | None, outcome: Outcome) -> InstallReport | None:
    if resolution is None:
        return None
    installed = outcome.install
    return InstallReport(
        requirements=list(resolution.requirements),
        wheels=[wheel.filename for wheel in resolution.wheels],
        from_cache=resolution.from_cache,
        resolve_s=round(resolution.seconds, 3),
        install_s=installed.seconds if installed else 0.0,
        ok=(installed.finished and installed.exit_code == 0) if installed else True,
        output=installed.output if installed else "nothing to install: no requirement applies here",
    )
