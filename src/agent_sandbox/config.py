"""Settings: a TOML file (``configs/default.toml`` documents every key) with
``AGENT_SANDBOX_...`` environment overrides, e.g. ``AGENT_SANDBOX_LIMITS__MEMORY_MIB=512``.

Unknown keys and invalid values are errors that name the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "AGENT_SANDBOX_"
ENV_NESTED_DELIMITER = "__"
CONFIG_PATH_ENV = "AGENT_SANDBOX_CONFIG"


GVISOR = "runsc"  # the OCI runtime name gVisor registers under
# The image profiles this repository defines (folders under images/, described in
# images/profiles.py; tests/unit/test_config.py keeps the two equal).
PROFILE_NAMES = ("minimal", "datascience", "minimal-3.13", "datascience-3.13")


class ConfigError(Exception):
    """The configuration file or an environment override is invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineSettings(_Section):
    """Where sandboxes run and how many at once."""

    backend: Literal["docker", "oci", "kubernetes"] = Field(
        default="docker",
        description="docker: one engine's containers; oci: the same containers started by runc "
        "directly, images from Docker; kubernetes: a cluster's pods.",
    )
    docker_host: str = Field(
        default="", description="Docker engine URL; empty uses DOCKER_HOST or the local socket."
    )
    image_repository: str = Field(
        default="agent-sandbox", min_length=1, description="Profile P's image is REPOSITORY:P."
    )
    profile: str = Field(default="minimal", description="The image profile of a run that names none.")
    profiles: list[str] = Field(
        default=["minimal"], min_length=1, description="The only image profiles a run may use."
    )

    network: str = Field(default="", description="Docker network for sandboxes; empty: no network at all.")
    runtime: str = Field(
        default="", description="OCI runtime for sandboxes, e.g. runsc (gVisor); empty: the engine's default."
    )
    oci_dir: str = Field(
        default="/var/lib/agent-sandbox/oci",
        description="engine.backend oci: where each image's file system is exported, once per image.",
    )
    oci_state_dir: str = Field(
        default="/run/agent-sandbox", description="engine.backend oci: the runtime's state and the bundles."
    )
    max_concurrent_runs: int = Field(default=4, ge=1, le=256)
    max_queued_runs: int = Field(default=16, ge=0, le=10_000)
    pool_size: int = Field(
        default=2, ge=0, le=64, description="Containers started ahead of time; 0 turns the pool off."
    )
    pool_max_idle_s: float = Field(
        default=300.0, gt=0, description="A warm container older than this is replaced."
    )
    pool_max_size: int = Field(
        default=8,
        ge=0,
        le=64,
        description="The most the warm pool grows to when calls come faster than it refills "
        "(never below pool_size).",
    )

    @field_validator("profile", "profiles")
    @classmethod
    def _known_profiles(cls, value: str | list[str]) -> str | list[str]:
        for name in [value] if isinstance(value, str) else value:
            if name not in PROFILE_NAMES:
                raise ValueError(f"unknown image profile {name!r}; known profiles: {sorted(PROFILE_NAMES)}")
        return value

    def image_of(self, profile: str) -> str:
        """The image tag of ``profile`` on the engine."""
        return f"{self.image_repository}:{profile}"


class Toleration(_Section):
    """A Kubernetes toleration for the sandbox pods, as in a pod spec."""

    key: str = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""


class KubernetesSettings(_Section):
    """Where and how sandbox pods run when ``engine.backend`` is "kubernetes"."""

    namespace: str = Field(default="agent-sandbox", min_length=1, description="Sandbox pods live here.")
    kubeconfig: str = Field(
        default="",
        description="Kubeconfig; empty: in-cluster credentials in a pod, else $KUBECONFIG, ~/.kube/config.",
    )
    context: str = Field(default="", description="Kubeconfig context; empty: its current one.")
    runtime_class: str = Field(
        default="", description="RuntimeClass of sandbox pods, e.g. gvisor; empty: the nodes' default."
    )
    node_selector: dict[str, str] = Field(default={}, description="Nodes sandbox pods may run on.")
    tolerations: list[Toleration] = Field(default=[], description="Taints sandbox pods tolerate.")
    images: dict[str, str] = Field(
        default={},
        description="Image of each profile; a profile not named uses engine.image_repository:PROFILE.",
    )
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    cpu_request: float = Field(
        default=0.1,
        gt=0,
        le=64,
        description="CPUs the scheduler reserves per sandbox (the limit is limits.cpus).",
    )
    start_timeout_s: float = Field(default=120.0, gt=0, description="For a pod to be scheduled and running.")
    max_pod_lifetime_s: int = Field(
        default=4200, ge=60, description="activeDeadlineSeconds: the cluster ends any sandbox pod this old."
    )
    server_pod_name: str = Field(
        default="", description="The server's own pod (downward API): sandbox pods get it as their owner."
    )
    server_pod_uid: str = Field(default="", description="Its uid, for the owner reference.")

    @field_validator("images")
    @classmethod
    def _known_image_profiles(cls, images: dict[str, str]) -> dict[str, str]:
        for name in images:
            if name not in PROFILE_NAMES:
                raise ValueError(f"unknown image profile {name!r}; known profiles: {sorted(PROFILE_NAMES)}")
        return images


class LimitSettings(_Section):
    """Per-run resource limits: the defaults a run gets, which are also the most it may ask for.

    The one exception is time: a run gets ``timeout_s`` unless it asks for up to ``max_timeout_s``.
    """

    memory_mib: int = Field(default=1024, ge=32, description="RAM, swap off; tmpfs counts too.")
    cpus: float = Field(default=1.0, gt=0, le=64)
    cpu_shares: int = Field(default=1024, ge=2, le=262_144)
    pids: int = Field(default=128, ge=8, le=100_000)
    open_files: int = Field(default=1024, ge=16, le=1_048_576)
    file_size_mib: int = Field(default=1024, ge=1)
    work_mib: int = Field(default=512, ge=1, description="tmpfs size of /work.")
    tmp_mib: int = Field(default=128, ge=1, description="tmpfs size of /tmp.")
    shm_mib: int = Field(default=64, ge=0, description="tmpfs size of /dev/shm; 0: none.")
    timeout_s: float = Field(default=30.0, gt=0)
    max_timeout_s: float = Field(default=300.0, gt=0)
    max_background_timeout_s: float = Field(
        default=3600.0, gt=0, description="The most a background run may ask for (run_status to follow it)."
    )
    output_capture_kib: int = Field(
        default=1024, ge=1, description="Output kept per stream; the rest is counted, not kept."
    )
    output_kill_kib: int = Field(
        default=16384, ge=1, description="Total output after which the program is stopped."
    )

    @property
    def files_in_memory_mib(self) -> int:
        """The most that /work, /tmp and /dev/shm can hold: it all lives in the memory limit."""
        return self.work_mib + self.tmp_mib + self.shm_mib

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.timeout_s > self.max_timeout_s:
            raise ValueError(
                f"timeout_s ({self.timeout_s}) must not exceed max_timeout_s ({self.max_timeout_s})"
            )
        if self.max_background_timeout_s < self.max_timeout_s:
            raise ValueError(
                f"max_background_timeout_s ({self.max_background_timeout_s}) must be at least "
                f"max_timeout_s ({self.max_timeout_s}): a background run may run as long as a foreground one"
            )
        if self.output_kill_kib < self.output_capture_kib:
            raise ValueError("output_kill_kib must be at least output_capture_kib")
        return self


class ServerSettings(_Section):
    """The MCP server's own protection: who may call, how much, and what is recorded."""

    auth_token: str = Field(
        default="", description="Bearer token for HTTP; required off loopback.", repr=False
    )
    max_request_kib: int = Field(default=96 * 1024, ge=64, description="Largest HTTP request body.")
    max_runs_per_client: int = Field(
        default=4, ge=1, description="Runs one HTTP client may have at once; more wait their turn."
    )
    max_queued_per_client: int = Field(
        default=8, ge=0, description="Runs one HTTP client may have waiting; past this: busy."
    )
    runs_per_minute_per_client: int = Field(default=120, ge=0, description="0: no rate limit.")
    max_batch: int = Field(default=100, ge=1, le=10_000, description="Programs one run_batch call may hold.")
    audit_log: str = Field(default="", description="JSON-lines audit log path; empty: off.")


class FileSettings(_Section):
    """What a caller may send: counts and sizes of files and stdin."""

    max_files: int = Field(default=1000, ge=1, le=100_000)
    max_file_kib: int = Field(default=10 * 1024, ge=1)
    max_total_kib: int = Field(default=50 * 1024, ge=1)
    max_stdin_kib: int = Field(default=10 * 1024, ge=0)


class PackageSettings(_Section):
    """Per-run requirements: wheels the host downloads and the sandbox installs offline."""

    enabled: bool = Field(default=True, description="False refuses every per-run requirement.")
    allow: list[str] = Field(default=[], description="Only these may be asked for; empty: any.")
    deny: list[str] = Field(default=[], description="Never installed, asked for or pulled in.")
    max_requirements: int = Field(default=20, ge=1, le=1000)
    max_wheels: int = Field(default=40, ge=1, le=1000, description="Wheels one run may install.")
    max_total_mib: int = Field(default=256, ge=1, description="Their total size.")
    install_mib: int = Field(default=1024, ge=16, description="tmpfs size of /packages.")
    install_timeout_s: float = Field(default=120.0, gt=0, description="Installing, in the sandbox.")
    resolve_timeout_s: float = Field(default=120.0, gt=0, description="Resolving and downloading.")
    resolution_ttl_s: float = Field(
        default=86_400.0, ge=0, description="How long a resolved requirement list is reused."
    )
    cache_dir: str = Field(default="", description="Wheel cache; empty: ~/.cache/agent-sandbox.")
    max_cache_mib: int = Field(default=4096, ge=1, description="Least recently used wheels go past this.")
    auto_install: bool = Field(
        default=True,
        description="A run that dies on a missing module is run once more with the package that "
        "provides it (within this policy); needs `enabled`.",
    )

    @field_validator("allow", "deny")
    @classmethod
    def _canonical(cls, names: list[str]) -> list[str]:
        return [canonicalize_name(name) for name in names]

    @property
    def cache_path(self) -> Path:
        """Where wheels are cached: ``cache_dir``, else the user's cache folder."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser().absolute()  # Docker bind-mounts from it
        root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(root) / "agent-sandbox"


class ResultSettings(_Section):
    """What comes back besides the output: files, images, the last expression, the summary."""

    max_artifacts: int = Field(default=50, ge=0, le=10_000, description="Files returned per run.")
    max_artifact_kib: int = Field(default=10 * 1024, ge=0, description="Their total size.")
    max_inline_text_kib: int = Field(default=64, ge=0, description="Text files shown inline up to this.")
    max_images: int = Field(default=4, ge=0, le=100, description="Images shown to the model per run.")
    max_image_kib: int = Field(default=2048, ge=1, description="Largest image shown to the model.")
    max_return_value_chars: int = Field(
        default=2000, ge=16, le=12_000, description="Cap on the last expression's repr."
    )
    summary_kib: int = Field(default=16, ge=2, description="The text a model reads first, at most.")
    post_mortem: bool = Field(
        default=True,
        description="At the time limit, each Python process dumps its stacks (SIGURG) before the kill.",
    )


class WorkspaceSettings(_Section):
    """Workspaces: /work kept between runs (as a snapshot on disk), never a container."""

    enabled: bool = Field(default=True, description="False refuses every workspace call.")
    dir: str = Field(default="", description="Where snapshots live; empty: the user's data folder.")
    max_kib: int = Field(
        default=50 * 1024, ge=1, description="Largest snapshot; a bigger /work is not saved."
    )
    max_state_kib: int = Field(
        default=128 * 1024,
        ge=0,
        description="Largest Python state a run_python cell keeps (its names, pickled in the sandbox); "
        "0 keeps none.",
    )
    max_count: int = Field(default=200, ge=1, description="Workspaces on this server.")
    max_per_client: int = Field(default=10, ge=1, description="Workspaces one client may have.")
    idle_ttl_s: float = Field(default=86_400.0, gt=0, description="Unused this long: dropped.")
    shared: bool = Field(default=False, description="Any client may use any workspace id it knows.")

    @property
    def path(self) -> Path:
        """Where snapshots live: ``dir``, else $XDG_DATA_HOME or ~/.local/share."""
        if self.dir:
            return Path(self.dir).expanduser().absolute()
        return _data_home() / "workspaces"


class RunSettings(_Section):
    """Background runs: started by one call, followed and collected by others, their results kept
    on disk (never unpacked, never executable) for a while, across restarts."""

    dir: str = Field(default="", description="Where results live; empty: the user's data folder.")
    max_background_runs: int = Field(
        default=8, ge=0, description="In flight, and one fewer than engine.max_concurrent_runs; 0: none."
    )
    max_background_runs_per_client: int = Field(default=2, ge=1, description="Per client.")
    result_ttl_s: float = Field(
        default=86_400.0, gt=0, description="A finished run's result is kept this long."
    )
    max_stored_runs: int = Field(default=200, ge=1, description="Results kept; the oldest go first.")
    shared: bool = Field(default=False, description="Any client may follow any run id it knows.")

    @property
    def path(self) -> Path:
        """Where results live: ``dir``, else $XDG_DATA_HOME or ~/.local/share."""
        if self.dir:
            return Path(self.dir).expanduser().absolute()
        return _data_home() / "runs"


def _data_home() -> Path:
    root = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(root) / "agent-sandbox"


class Settings(BaseSettings):
    """All of agent-sandbox's settings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    engine: EngineSettings = EngineSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    limits: LimitSettings = LimitSettings()
    files: FileSettings = FileSettings()
    server: ServerSettings = ServerSettings()
    packages: PackageSettings = PackageSettings()
    results: ResultSettings = ResultSettings()
    workspaces: WorkspaceSettings = WorkspaceSettings()
    runs: RunSettings = RunSettings()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.files.max_total_kib > self.limits.work_mib * 1024:
            raise ValueError("files.max_total_kib must fit in limits.work_mib")
        if self.engine.profile not in self.engine.profiles:
            raise ValueError(
                f"engine.profile {self.engine.profile!r} is not in engine.profiles; add it there"
            )
        if self.engine.backend == "kubernetes":
            self._consistent_on_kubernetes()
        if self.engine.backend == "oci":
            self._consistent_on_oci()
        largest_call_kib = self.files.max_total_kib * 4 // 3 + self.files.max_stdin_kib + 64
        if self.server.max_request_kib < largest_call_kib:
            raise ValueError(
                f"server.max_request_kib must be at least {largest_call_kib} to carry the largest "
                "call the files limits allow (base64 adds a third)"
            )
        return self

    def _consistent_on_oci(self) -> None:
        if self.engine.network:
            raise ValueError(
                "engine.network is a Docker network and engine.backend is oci, whose sandboxes have no "
                'network: leave it empty, or use engine.backend = "docker"'
            )
        if self.engine.runtime not in ("", "runc"):
            raise ValueError(
                f"engine.runtime {self.engine.runtime!r}: engine.backend oci runs runc (leave it empty or "
                'say "runc"); gVisor (runsc) runs through engine.backend = "docker"'
            )

    def _consistent_on_kubernetes(self) -> None:
        engine = self.engine
        for key, value in (("network", engine.network), ("runtime", engine.runtime)):
            if value:
                raise ValueError(
                    f"engine.{key} is a Docker setting and engine.backend is kubernetes: leave it empty "
                    "(sandbox pods have no network; their runtime is kubernetes.runtime_class)"
                )
        if self.packages.enabled:
            raise ValueError(
                "packages.enabled: per-run requirements are not offered on Kubernetes yet (they need the "
                "server's wheel cache inside the sandbox); set it to false (configs/kubernetes.toml does)"
            )
        # Starting (scheduling, an image pull), a warm wait, an install, the longest run, the graces.
        longest_pod_life_s = (
            self.kubernetes.start_timeout_s
            + engine.pool_max_idle_s
            + self.packages.install_timeout_s
            + self.limits.max_background_timeout_s  # the longest run: a background one
            + 60
        )
        if self.kubernetes.max_pod_lifetime_s < longest_pod_life_s:
            raise ValueError(
                f"kubernetes.max_pod_lifetime_s must be at least {longest_pod_life_s:.0f}: a start "
                "(kubernetes.start_timeout_s), a warm wait (engine.pool_max_idle_s), an install and the "
                "longest run (limits.max_background_timeout_s) must fit"
            )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file, which beats the defaults; no .env or secrets files.
        return (env_settings, init_settings)


def load_settings(path: Path | None = None) -> Settings:
    """Load settings from ``path`` (or ``$AGENT_SANDBOX_CONFIG``), then apply the environment."""
    if path is None and os.environ.get(CONFIG_PATH_ENV):
        path = Path(os.environ[CONFIG_PATH_ENV])
    file_values = _read_toml(path) if path is not None else {}
    _reject_unknown_env(os.environ)
    try:
        return Settings(**file_values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _reject_unknown_env(environ: Mapping[str, str]) -> None:
    """A misspelt override silently doing nothing is worse than an error."""
    known = {ENV_PREFIX.rstrip("_") + "_CONFIG"}
    for section_name, section in Settings.model_fields.items():
        annotation = section.annotation
        assert isinstance(annotation, type)
        assert issubclass(annotation, BaseModel)
        for key in annotation.model_fields:
            known.add(f"{ENV_PREFIX}{section_name}{ENV_NESTED_DELIMITER}{key}".upper())
    for name in environ:
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known:
            raise ConfigError(
                f"unknown environment override {name}: overrides look like "
                f"{ENV_PREFIX}LIMITS{ENV_NESTED_DELIMITER}MEMORY_MIB (see configs/default.toml)"
            )


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(settings)"
        problems.append(f"{key}: {error['msg']}")
    return f"invalid configuration{where}: " + "; ".join(problems)


__all__ = [
    "ConfigError",
    "EngineSettings",
    "FileSettings",
    "KubernetesSettings",
    "LimitSettings",
    "PackageSettings",
    "ResultSettings",
    "ServerSettings",
    "Settings",
    "WorkspaceSettings",
    "load_settings",
]
