"""The one service every front end calls: validate a request, run it, judge the outcome; and the
server's one door for the engine's health, the load, and workspaces."""

from __future__ import annotations

import contextlib
import logging
import math
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import TracebackType

import anyio.to_thread
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from agent_sandbox.admission import Admission, Caller, QueuedCallback
from agent_sandbox.archive import (
    Archive,
    Incoming,
    build_archive,
    check_path,
    decode_content,
    incoming_path,
    incoming_size,
)
from agent_sandbox.artifacts import collect_artifacts
from agent_sandbox.cell_state import read_cell_state, state_notes
from agent_sandbox.config import LimitSettings, Settings
from agent_sandbox.engine.backends import make_engine
from agent_sandbox.engine.base import Engine, EngineHealth, OutputCallback, ProgressCallback, WarmSandboxes
from agent_sandbox.engine.spec import ContainerShape, InstallSpec, Outcome, PackageMount, ResultCaps, RunSpec
from agent_sandbox.errors import Refused, SandboxError
from agent_sandbox.filenames import shown_name
from agent_sandbox.images.profiles import get_profile, profiles_pinning
from agent_sandbox.models import (
    InstallReport,
    LimitRequest,
    Limits,
    RunRequest,
    RunResult,
    StateReport,
    WorkspaceReport,
)
from agent_sandbox.packages.missing import MissingModule, missing_module, missing_note, refusal
from agent_sandbox.packages.policy import check_requested, check_resolved
from agent_sandbox.packages.requirements import REQUIREMENTS_FILE, parse_requirements, requirements_file
from agent_sandbox.packages.resolver import Resolution, WheelResolver
from agent_sandbox.packages.target import target_for
from agent_sandbox.postmortem import stopped_at
from agent_sandbox.tracebacks import parse_error
from agent_sandbox.verdict import judge
from agent_sandbox.workspaces import SavedState, WorkspaceInfo, WorkspaceStore

log = logging.getLogger(__name__)
LOCAL = Caller()  # a caller of this process's own: the command line, a script, a test
RequestError = Refused  # the name this service's refusals had before errors.py; kept for callers


def resolve_limits(asked: LimitRequest, configured: LimitSettings, background: bool = False) -> Limits:
    """The limits a run gets: the configured ones, lowered where the caller asked.

    Time may also be raised, up to ``max_timeout_s`` (``max_background_timeout_s`` for a
    background run); nothing else may exceed its default. Less
    memory shrinks /work, /tmp and /dev/shm in the same proportion: they are memory, and must
    still fit in it for a full disk to read as one (the result's ``limits`` shows the sizes).
    """
    ceilings: dict[str, float] = {
        "timeout_s": configured.max_background_timeout_s if background else configured.max_timeout_s,
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
            longer = (
                f" (or run it in the background, background=true, for up to "
                f"{configured.max_background_timeout_s:g})"
                if name == "timeout_s" and not background
                else ""
            )
            raise Refused(
                f"{name} {wanted:g} is above the maximum of {ceiling:g}; ask for {ceiling:g} or less{longer}"
            )
        values[name] = wanted
    share = values["memory_mib"] / configured.memory_mib
    if share < 1:
        for name in ("work_mib", "tmp_mib", "shm_mib"):
            values[name] = math.ceil(values[name] * share)
    return Limits(**values)


@dataclass(frozen=True)
class Load:
    """How busy the service is right now, against what it allows."""

    running: int
    queued: int
    slots: int
    queue_places: int
    warm_ready: int
    warm_size: int


@dataclass(frozen=True)
class _Checked:
    """A request that passed every check that needs no engine: what the spec is made of."""

    archive: Archive
    stdin: bytes | None
    profile: str
    limits: Limits


class Sandbox:
    """Runs ``RunRequest``s in the sandbox and returns ``RunResult``s, on any ``Engine`` (Docker
    unless told otherwise), at most ``engine.max_concurrent_runs`` at once.

    Used as ``async with``, it also keeps the warm pool (``engine.pool_size``) for as long as the
    block lasts; without it, every run starts a sandbox cold.
    """

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.engine: Engine = engine or make_engine(settings)
        self.pool: WarmSandboxes | None = None
        self.admission = Admission(settings.engine.max_concurrent_runs, settings.engine.max_queued_runs)
        self.wheels = WheelResolver.from_settings(settings.packages)
        self.workspaces = WorkspaceStore(settings.workspaces, max_members=2 * settings.files.max_files)
        self._lifetime = contextlib.AsyncExitStack()

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
            warm = self.engine.warm(
                shape,
                engine_settings.pool_size,
                engine_settings.pool_max_idle_s,
                engine_settings.pool_max_size,
            )
            self.pool = await self._lifetime.enter_async_context(warm)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.pool = None
        await self._lifetime.__aexit__(exc_type, exc, traceback)

    def start(self) -> str:
        """Check the engine, every profile's image and the runtime, and remove sandboxes and wheel
        folders a crashed process left behind.

        Returns the engine version; raises ``EngineError`` with a fix when something is missing.
        """
        health = self.engine_health()
        if health.problems:
            raise health.problems[0]
        removed = self.engine.reap(older_than_s=self._longest_sandbox_life_s())
        if removed:
            log.info("removed %d sandbox(es) left behind by an earlier process", removed)
        self.wheels.cache.remove_stale(older_than_s=self._longest_sandbox_life_s())
        return health.version or "?"

    def engine_health(self) -> EngineHealth:
        """The engine, every offered profile's image and the runtime, as the engine sees them
        (blocking: from async code, use ``health``)."""
        engine = self.settings.engine
        return self.engine.health([engine.image_of(name) for name in engine.profiles], engine.runtime)

    async def health(self) -> EngineHealth:
        """``engine_health``, off the event loop."""
        return await anyio.to_thread.run_sync(self.engine_health, abandon_on_cancel=True)

    @property
    def engine_name(self) -> str:
        """How messages call the engine, e.g. "the Docker engine"."""
        return self.engine.name

    def load(self) -> Load:
        """Runs in progress and waiting, against the slots and queue places, and the warm pool."""
        engine = self.settings.engine
        return Load(
            running=self.admission.running,
            queued=self.admission.queued,
            slots=engine.max_concurrent_runs,
            queue_places=engine.max_queued_runs,
            warm_ready=self.pool.ready if self.pool is not None else 0,
            warm_size=engine.pool_size,
        )

    def close(self) -> int:
        """Remove any sandbox this process still has (runs cut short by shutdown)."""
        return self.engine.close()

    async def create_workspace(self, owner: str) -> WorkspaceInfo:
        """A new, empty workspace for ``owner`` (on the event loop, like ``in_use``: the count of
        workspaces and their busy marks are not shared with threads)."""
        return self.workspaces.create(owner)

    async def describe_workspace(self, workspace: str, owner: str) -> WorkspaceInfo:
        """The workspace and the size of every file in it."""
        return await anyio.to_thread.run_sync(self.workspaces.describe, workspace, owner)

    async def read_workspace_file(self, workspace: str, owner: str, path: str) -> bytes:
        """One file of the workspace."""
        return await anyio.to_thread.run_sync(self.workspaces.read, workspace, owner, path)

    async def reset_workspace_state(self, workspace: str, owner: str) -> None:
        """Forget the workspace's Python state; its files stay (on the event loop, like
        ``delete_workspace``: a run on it meanwhile is refused, never undone)."""
        self.workspaces.reset_state(workspace, owner)

    async def delete_workspace(self, workspace: str, owner: str) -> None:
        """Remove the workspace and its files (on the event loop, so no run can take it between
        the check that it is free and its removal)."""
        self.workspaces.delete(workspace, owner)

    def prepare(self, request: RunRequest) -> RunSpec:
        """Validate ``request`` and turn it into a sandbox spec (without requirements), or raise
        ``Refused``."""
        return self._spec(request, self._checked(request, list(request.files)), None, None)

    async def run(
        self,
        request: RunRequest,
        on_progress: ProgressCallback | None = None,
        caller: Caller = LOCAL,
        on_output: OutputCallback | None = None,
    ) -> RunResult:
        """Run ``request`` in a fresh sandbox; refusals raise ``Refused`` (``Busy`` for a full
        server), infrastructure failures ``EngineError``. ``caller`` owns the workspaces it uses
        and waits within its share; ``on_output`` sees the program's output as it comes."""
        requirements, files = self._requirements(request)  # the caller's own: never a workspace's
        if request.workspace is None:
            result, _ = await self._attempt(request, files, requirements, caller, on_progress, on_output)
            return result
        workspace = request.workspace
        with self.workspaces.in_use(workspace, caller.id):
            stored = await anyio.to_thread.run_sync(self.workspaces.files, workspace, caller.id)
            files = self._on_top_of(workspace, stored, files)
            keep_state = self._keeps_state(request)
            before = None
            if keep_state:
                before = await anyio.to_thread.run_sync(self.workspaces.state, workspace, caller.id)
            result, outcome = await self._attempt(
                request, files, requirements, caller, on_progress, on_output, before
            )
            report = await anyio.to_thread.run_sync(self._save, workspace, caller.id, outcome)
            state = None
            if keep_state:
                state = await anyio.to_thread.run_sync(
                    self._save_state, workspace, caller.id, outcome, report, before, result.profile
                )
        notes = result.notes + ([f"Workspace {workspace}: {report.note}"] if report.note else [])
        if state is not None:
            notes += state_notes(state, before.profile if before else None, result.profile)
        return result.model_copy(update={"workspace": report, "state": state, "notes": notes})

    async def _attempt(
        self,
        request: RunRequest,
        files: list[Incoming],
        requirements: list[Requirement],
        caller: Caller,
        on_progress: ProgressCallback | None,
        on_output: OutputCallback | None,
        state: SavedState | None = None,
    ) -> tuple[RunResult, Outcome]:
        """Run once. A run that died on a module none of its files provide gets a note naming
        the package; with ``packages.auto_install`` (and the policy's leave) it runs once more,
        from the same files and state, with that package installed."""

        async def execute(packages: list[Requirement]) -> tuple[RunResult, Outcome]:
            return await self._execute(request, files, packages, caller, on_progress, on_output, state)

        result, outcome = await execute(requirements)
        missing, note = self._missing(result, files)
        if missing is None:
            return result, outcome
        packages = self.settings.packages
        asked = {canonicalize_name(requirement.name) for requirement in requirements}
        if (
            not packages.auto_install
            or refusal(missing, packages) is not None
            or canonicalize_name(missing.distribution) in asked
        ):
            return _with_notes(result, note), outcome
        wanted = missing.requirement
        if on_progress is not None:
            await on_progress(
                "resolving", f"no module named {missing.module!r}: installing {wanted!r}, running again"
            )
        try:
            retry, retried = await execute(requirements + parse_requirements([wanted]))
        except SandboxError as exc:  # refused, busy, or the engine failed: the first run's result stands
            tried = f"The server tried to install {wanted!r} and run the call again, and could not: {exc}"
            return _with_notes(result, note, tried), outcome
        if retry.install is None or not retry.install.ok:
            output = retry.install.output if retry.install else ""
            return _with_notes(
                result, note, f"The server tried to install {wanted!r}; that failed: {output}"
            ), outcome
        install = retry.install.model_copy(update={"auto": True, "added": [wanted]})
        auto = (
            f"The first run stopped on ModuleNotFoundError (no module named {missing.module!r}); the "
            f"server installed {wanted!r} (offline, for this call only) and ran the call once more "
            f"in a fresh sandbox, from the same files{' and state' if state else ''}: this is that "
            f"run. Next time pass requirements=[{wanted!r}] yourself."
        )
        _, still = self._missing(retry, files)  # it may need another one: named, not installed
        return _with_notes(retry, auto, still).model_copy(update={"install": install}), retried

    def _missing(self, result: RunResult, files: list[Incoming]) -> tuple[MissingModule | None, str | None]:
        """The package a run that died on a missing module needs, and the note naming it; none
        for a module the run's own files provide (a place problem, not a package)."""
        missing = missing_module(result.error)
        if missing is None or _provided_by_files(missing.module, files):
            return None, None
        having = profiles_pinning(missing.distribution, self.settings.engine.profiles)
        return missing, missing_note(missing, result.profile, having, self.settings.packages)

    def _keeps_state(self, request: RunRequest) -> bool:
        """Whether this run restores and keeps the workspace's Python state."""
        in_workspace = request.notebook and request.workspace is not None
        return in_workspace and request.keep_state is not False and self.settings.workspaces.max_state_kib > 0

    def _save_state(
        self,
        workspace: str,
        owner: str,
        outcome: Outcome,
        files: WorkspaceReport,
        before: SavedState | None,
        profile: str,
    ) -> StateReport:
        """Keep the cell's state as the workspace's, together with its files: if /work was not
        saved, neither is the state (the next call starts where this one did)."""
        if not files.saved:
            note = "not saved, as /work was not: the next call starts with the names of before this call"
            return read_cell_state(None, before).report.model_copy(update={"note": note})
        cell = read_cell_state(outcome.state, before)
        if cell.data is not None:
            kept = SavedState(cell.data, tuple(cell.report.kept), profile)
            try:
                self.workspaces.save_state(workspace, owner, kept)
            except Refused as exc:  # deleted or expired meanwhile
                return cell.report.model_copy(update={"saved": False, "note": f"not saved: {exc}"})
        return cell.report

    def _longest_sandbox_life_s(self) -> float:
        """How long a sandbox of ours can legitimately exist: a warm wait or an install, then a
        whole run."""
        slack_s = 60.0
        before_run_s = max(self.settings.engine.pool_max_idle_s, self.settings.packages.install_timeout_s)
        return before_run_s + self.settings.limits.max_background_timeout_s + slack_s

    def _checked(self, request: RunRequest, files: list[Incoming]) -> _Checked:
        """Every check of ``request`` that needs no engine; ``Refused`` names the first it fails."""
        check_path(request.entrypoint, "entrypoint")
        archive = build_archive(files, self.settings.files)
        if request.entrypoint not in archive.paths:
            raise Refused(
                f"entrypoint {request.entrypoint!r} is not one of the files sent "
                f"({', '.join(sorted(archive.paths)[:10])}); name one of them"
            )
        stdin = request.stdin.encode() if request.stdin is not None else None
        max_stdin = self.settings.files.max_stdin_kib * 1024
        if stdin is not None and len(stdin) > max_stdin:
            raise Refused(
                f"stdin is {len(stdin)} bytes, over the {self.settings.files.max_stdin_kib} KiB "
                "limit; send the data as a file instead and read it from /work"
            )
        profile = request.profile or self.settings.engine.profile
        if profile not in self.settings.engine.profiles:
            raise Refused(
                f"image profile {profile!r} is not offered here; use one of "
                f"{', '.join(self.settings.engine.profiles)}"
            )
        limits = resolve_limits(request.limits, self.settings.limits, request.background)
        if request.keep_state and not (request.notebook and request.workspace is not None):
            raise Refused(
                "keep_state is for run_python cells in a workspace (pass workspace=...); a run_project "
                "program's names end with it: keep what matters in files under /work instead"
            )
        return _Checked(archive, stdin, profile, limits)

    def _spec(
        self, request: RunRequest, checked: _Checked, install: InstallSpec | None, state: SavedState | None
    ) -> RunSpec:
        """The spec the engine runs, in one step."""
        results, engine = self.settings.results, self.settings.engine
        in_workspace = request.workspace is not None
        keep_state = self._keeps_state(request)
        return RunSpec(
            image=engine.image_of(checked.profile),
            archive=checked.archive.data,
            entrypoint=request.entrypoint,
            args=tuple(request.args),
            stdin=checked.stdin,
            env=dict(request.env),
            limits=checked.limits,
            state=state.data if state is not None and keep_state else b"",
            network=engine.network,
            runtime=engine.runtime,
            install=install,
            results=ResultCaps(
                max_files=results.max_artifacts,
                max_bytes=results.max_artifact_kib * 1024,
                max_listed=results.max_artifacts,
                notebook=request.notebook,
                return_value_chars=results.max_return_value_chars if request.return_last_expression else 0,
                post_mortem=results.post_mortem,
                snapshot_files=self.settings.files.max_files if in_workspace else 0,
                # The most a workspace may hold: its cap, and what one call may send back in.
                snapshot_bytes=(
                    min(self.settings.workspaces.max_kib, self.settings.files.max_total_kib) * 1024
                    if in_workspace
                    else 0
                ),
                state_bytes=self.settings.workspaces.max_state_kib * 1024 if keep_state else 0,
            ),
        )

    def _requirements(self, request: RunRequest) -> tuple[list[Requirement], list[Incoming]]:
        """The packages ``request`` needs (its ``requirements`` and a top-level requirements.txt
        among its files), checked against the policy; and its files, that requirements.txt
        among them already decoded, so that nothing decodes it twice."""
        specs = list(request.requirements)
        files: list[Incoming] = []
        for index, file in enumerate(request.files):
            if file.path == REQUIREMENTS_FILE:
                data = decode_content(file, f"files[{index}] ({file.path!r})")
                specs += requirements_file(data.decode("utf-8", errors="replace"))
                files.append((file.path, data))
            else:
                files.append(file)
        requirements = parse_requirements(specs)
        check_requested(requirements, self.settings.packages)
        return requirements, files

    async def _resolve(self, requirements: list[Requirement], profile: str) -> Resolution:
        """Wheels for ``requirements`` on ``profile``'s Python, from the host's cache or
        downloaded, within the policy."""
        resolution = await self.wheels.resolve(requirements, target_for(get_profile(profile).python))
        check_resolved(resolution.wheels, self.settings.packages)
        return resolution

    def _on_top_of(self, workspace: str, stored: dict[str, bytes], files: list[Incoming]) -> list[Incoming]:
        """The workspace's files under the caller's ``files`` (the caller's win), refused with a
        workspace's reason when the two together are over the files limits."""
        limits = self.settings.files
        sent = {unicodedata.normalize("NFC", incoming_path(file)) for file in files}
        kept: list[Incoming] = [
            (path, data) for path, data in stored.items() if unicodedata.normalize("NFC", path) not in sent
        ]
        make_room = (
            "make room first: run a program in the workspace that deletes what you no longer need, "
            "sent under the name of a file the workspace already holds (it replaces that file), "
            "or start a new workspace"
        )
        if len(kept) + len(files) > limits.max_files:
            held = {unicodedata.normalize("NFC", path) for path in stored}
            added = [
                incoming_path(file)
                for file in files
                if unicodedata.normalize("NFC", incoming_path(file)) not in held
            ]
            named = ", ".join(repr(path) for path in added[:5]) + (", ..." if len(added) > 5 else "")
            adds = f" and this call adds {len(added)} ({named})" if added else ""
            raise Refused(
                f"workspace {workspace} holds {len(stored)} files{adds}, but a run starts with at "
                f"most {limits.max_files} files; {make_room}"
            )
        kept_bytes = sum(map(incoming_size, kept))
        if kept_bytes + sum(map(incoming_size, files)) > limits.max_total_kib * 1024:
            raise Refused(
                f"workspace {workspace} holds {kept_bytes // 1024} KiB besides the files this call "
                f"sends, and together they are over the {limits.max_total_kib} KiB a run starts "
                f"with; {make_room}"
            )
        return kept + files

    def _save(self, workspace: str, owner: str, outcome: Outcome) -> WorkspaceReport:
        """Keep /work as the workspace's state if every regular file in it can be kept; else keep
        the previous state and say why (links, pipes and sockets are never kept)."""
        snapshot = outcome.snapshot
        why_not = _unsaveable(outcome)
        if snapshot is not None and why_not is None:
            contents = dict(snapshot.contents())
            try:
                self.workspaces.save(workspace, owner, contents, self.settings.files)
            except Refused as exc:
                why_not = str(exc)
            else:
                size = sum(map(len, contents.values()))
                return WorkspaceReport(id=workspace, saved=True, files=len(contents), bytes=size)
        try:
            kept = self.workspaces.describe(workspace, owner).files
        except Refused:
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
        files: list[Incoming],
        requirements: list[Requirement],
        caller: Caller,
        on_progress: ProgressCallback | None,
        on_output: OutputCallback | None,
        state: SavedState | None = None,
    ) -> tuple[RunResult, Outcome]:
        """Run ``request`` with ``files`` (and a workspace's Python ``state``) once ``caller`` is
        admitted; its result, and the raw outcome (which holds all of /work, and the cell's new
        state, when it is a workspace run)."""
        checked = self._checked(request, files)
        resolution = None
        if requirements:
            if on_progress is not None:
                await on_progress("resolving")
            resolution = await self._resolve(requirements, checked.profile)
        async with self._installing(resolution) as install:
            spec = self._spec(request, checked, install, state)
            async with self.admission.admit(caller, _queued_reporter(on_progress)):
                outcome = await self.engine.run(spec, on_progress, on_output)
        stderr = outcome.stderr_text
        error = parse_error(stderr) if outcome.exit_code == 1 else None  # Python's code for it
        stopped = stopped_at(outcome.post_mortem)
        verdict = judge(
            outcome,
            spec.limits,
            max_timeout_s=(
                self.settings.limits.max_background_timeout_s
                if request.background
                else self.settings.limits.max_timeout_s
            ),
            had_stdin=request.stdin is not None,
            error=error,
            stopped=stopped,
        )
        usage = outcome.usage
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
            peak_memory_mib=_mib(usage.peak_memory_bytes) if usage else None,
            cpu_s=usage.cpu_s if usage else None,
            usage_source=usage.source if usage else None,
            oom_victim=outcome.oom_victim if outcome.oom_killed else None,
            stopped_at=stopped,
            warm_start=outcome.warm_start,
            violations=verdict.violations,
            notes=verdict.notes + artifact_notes,
            limits=spec.limits,
            profile=checked.profile,
            install=_install_report(resolution, outcome),
            return_value=_capped(outcome.return_value, spec.results.return_value_chars),
            error=error,
            artifacts=artifacts,
        )
        return result, outcome

    @contextlib.asynccontextmanager
    async def _installing(self, resolution: Resolution | None) -> AsyncIterator[InstallSpec | None]:
        """What to install before the program runs, its wheels staged for the sandbox while the
        block lasts; None when nothing is (markers may leave no wheel at all)."""
        if resolution is None or not resolution.wheels:
            yield None
            return
        with self.wheels.cache.staged(resolution.wheels) as folder:
            mount = PackageMount(str(folder), self.settings.packages.install_mib)
            wheels = tuple(wheel.filename for wheel in resolution.wheels)
            yield InstallSpec(mount, wheels, self.settings.packages.install_timeout_s)


def _with_notes(result: RunResult, *notes: str | None) -> RunResult:
    return result.model_copy(update={"notes": [*result.notes, *(note for note in notes if note)]})


def _provided_by_files(module: str, files: list[Incoming]) -> bool:
    """Whether the run's own files hold a module of that name (``X.py``) or a package (Python
    files in a folder ``X``), wherever: then the import failed for its place (sys.path starts at
    the program's own folder), not for a missing package, and nothing is installed for it. A
    folder of data named like a package (``data/yaml/``) does not count."""
    for file in files:
        path = PurePosixPath(incoming_path(file))
        if path.name == f"{module}.py" or (path.suffix == ".py" and module in path.parts[:-1]):
            return True
    return False


def _mib(size: int | None) -> float | None:
    return None if size is None else round(size / 2**20, 1)


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
    if snapshot.refused is not None:
        return snapshot.refused  # /work was over the workspace's caps
    if snapshot.omitted:
        lost = "; ".join(f"'{shown_name(entry.path)}': {entry.reason}" for entry in snapshot.omitted[:5])
        more = f" (and {len(snapshot.omitted) - 5} more)" if len(snapshot.omitted) > 5 else ""
        return f"these could not be kept, and saving without them would lose them: {lost}{more}"
    return None


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
