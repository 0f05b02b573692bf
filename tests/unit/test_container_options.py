"""The hardened container spec, checked option by option (no engine needed)."""

from __future__ import annotations

import dataclasses
import json

from agent_sandbox.config import GVISOR, LimitSettings
from agent_sandbox.engine.docker import LABEL, OWNER_LABEL, container_options
from agent_sandbox.engine.launch import NOTEBOOK_RUNNER
from agent_sandbox.engine.protocol import job_header
from agent_sandbox.engine.spec import ContainerShape, InstallSpec, PackageMount, ResultCaps, RunSpec
from agent_sandbox.models import Limits

LIMITS = Limits(**{name: getattr(LimitSettings(), name) for name in Limits.model_fields})
SPEC = RunSpec(
    image="agent-sandbox:minimal",
    archive=b"",
    entrypoint="main.py",
    args=("--flag", "value"),
    stdin=None,
    env={"MY_VAR": "1"},
    limits=LIMITS,
)
SHAPE = SPEC.shape


def test_a_configured_runtime_is_used_and_none_leaves_the_engines_default() -> None:
    gvisor = dataclasses.replace(SHAPE, runtime="runsc")
    assert container_options(gvisor, owner="h:1")["runtime"] == "runsc"
    assert "runtime" not in container_options(SHAPE, owner="h:1")


def test_under_gvisor_the_process_limit_is_gvisors_rlimit_and_the_cgroup_bounds_its_sentry() -> None:
    """The pids cgroup counts the Sentry's host threads under gVisor, so the program's limit is
    RLIMIT_NPROC there (gVisor counts it inside the sandbox); runc gets no nproc rlimit, since
    the host would count every uid-1000 process against it."""
    under_gvisor = container_options(dataclasses.replace(SHAPE, runtime="runsc", pids=32), owner="h:1")
    nproc = [u for u in under_gvisor["ulimits"] if u["Name"] == "nproc"]
    assert [(u["Soft"], u["Hard"]) for u in nproc] == [(32, 32)]
    assert under_gvisor["pids_limit"] > 5 * 32 + 38  # measured: 38 idle, ~5 host tasks per process
    under_runc = container_options(dataclasses.replace(SHAPE, pids=32), owner="h:1")
    assert under_runc["pids_limit"] == 32
    assert "nproc" not in {u["Name"] for u in under_runc["ulimits"]}


def test_the_container_is_offline_read_only_unprivileged_and_limited() -> None:
    options = container_options(SHAPE, owner="host:1")
    assert options["network_disabled"] is True
    assert options["read_only"] is True
    assert options["user"] == "1000:1000"
    assert options["cap_drop"] == ["ALL"]
    assert options["security_opt"] == ["no-new-privileges"]
    assert options["ipc_mode"] == "none"
    assert options["init"] is True
    assert options["cgroupns"] == "private"
    assert options["pids_limit"] == 128
    assert options["mem_limit"] == options["memswap_limit"] == 1024 * 1024 * 1024
    assert options["nano_cpus"] == 1_000_000_000
    assert options["cpu_shares"] == 1024
    assert "privileged" not in options
    assert "volumes" not in options


def test_work_tmp_and_shm_are_sized_noexec_tmpfs_owned_by_the_sandbox_user() -> None:
    tmpfs = container_options(SHAPE, owner="host:1")["tmpfs"]
    assert set(tmpfs) == {"/work", "/tmp", "/dev/shm"}
    for mount, size in (("/work", "512m"), ("/tmp", "128m"), ("/dev/shm", "64m")):
        flags = tmpfs[mount].split(",")
        assert f"size={size}" in flags
        assert {"uid=1000", "gid=1000", "noexec", "nosuid", "nodev"} <= set(flags)


def test_by_default_files_fit_in_memory_so_a_full_disk_is_not_a_memory_kill() -> None:
    assert SHAPE.work_mib + SHAPE.tmp_mib + SHAPE.shm_mib < SHAPE.memory_mib


def test_without_shared_memory_there_is_no_dev_shm_and_ipc_stays_private() -> None:
    options = container_options(dataclasses.replace(SHAPE, shm_mib=0), owner="h:1")
    assert set(options["tmpfs"]) == {"/work", "/tmp"}
    assert options["ipc_mode"] == "none"  # a private IPC namespace, and Docker mounts no /dev/shm


def test_ulimits_cap_open_files_file_size_and_core_dumps() -> None:
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in container_options(SHAPE, owner="h:1")["ulimits"]}
    assert ulimits == {
        "nofile": (1024, 1024),
        "fsize": (1024 * 1024 * 1024 + 1, 1024 * 1024 * 1024 + 1),  # one byte over: see file_size_rlimit
        "core": (0, 0),
    }


def test_labels_mark_the_container_as_ours_and_name_the_owner() -> None:
    labels = container_options(SHAPE, owner="host:42")["labels"]
    assert labels == {LABEL: "1", OWNER_LABEL: "host:42"}


def test_the_container_starts_the_launcher_with_no_job() -> None:
    """It is given the notebook runner's source, to start before a job comes, and whether the
    program's output is relayed (under gVisor): the runner must match the job's."""
    command = container_options(SHAPE, owner="h:1")["command"]
    assert command[:4] == ["python3", "-I", "-S", "-c"]
    assert command[-2:] == [NOTEBOOK_RUNNER, "direct"]
    gvisor = container_options(dataclasses.replace(SHAPE, runtime=GVISOR), owner="h:1")["command"]
    assert gvisor[-2:] == [NOTEBOOK_RUNNER, "relay"]


def test_the_environment_is_ours_and_nothing_from_the_host_or_a_job() -> None:
    env = container_options(SHAPE, owner="h:1")["environment"]
    assert env["PYTHONUNBUFFERED"] == "1"
    assert set(env) == {
        "PATH",
        "HOME",
        "LANG",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "XDG_CACHE_HOME",
        "MPLCONFIGDIR",
    }


def test_the_job_travels_length_prefixed_before_the_tar_stdin_and_state() -> None:
    spec = RunSpec(**{**SPEC.__dict__, "archive": b"x" * 1536, "stdin": b"abc", "state": b"12345"})
    header = job_header(spec, nonce="n0nce", install_nonce="other", measured_nonce="third")
    size, _, job = header.partition(b"\n")
    assert int(size) == len(job)
    assert json.loads(job) == {
        "archive_bytes": 1536,
        "stdin_bytes": 3,
        "state_bytes": 5,
        "entrypoint": "main.py",
        "args": ["--flag", "value"],
        "env": {"MY_VAR": "1"},
        "rlimits": {"nofile": LIMITS.open_files, "fsize": LIMITS.file_size_mib * 1024 * 1024 + 1, "core": 0},
        "wheels": [],
        "notebook": None,
        "artifacts": {"max_files": 0, "max_bytes": 0, "max_listed": 0},
        "snapshot": None,
        "timeout_s": 30.0,
        "relay_output": False,
        "post_mortem": True,
        "nonce": "n0nce",
        "install_nonce": "other",
        "measured_nonce": "third",
    }


def test_only_gvisor_runs_relay_the_programs_output() -> None:
    """Elsewhere the program writes straight into the container's pipes, so what it wrote is
    kept even if it kills the launcher; gVisor's pipes return short writes Python drops."""
    for runtime, relays in (("", False), ("runc", False), ("runsc", True)):
        spec = RunSpec(**{**SPEC.__dict__, "runtime": runtime})
        assert json.loads(job_header(spec, nonce="n").partition(b"\n")[2])["relay_output"] is relays


def test_a_notebook_job_carries_the_runner_and_the_caps() -> None:
    caps = ResultCaps(max_files=5, max_bytes=1024, max_listed=5, notebook=True, return_value_chars=100)
    spec = RunSpec(**{**SPEC.__dict__, "results": caps})
    job = json.loads(job_header(spec, nonce="n").partition(b"\n")[2])
    assert job["notebook"]["max_chars"] == 100
    assert "def main()" in job["notebook"]["runner"]
    assert job["artifacts"] == {"max_files": 5, "max_bytes": 1024, "max_listed": 5}
    assert spec.shape == SHAPE  # result caps travel with the job: warm containers still fit


WITH_WHEELS = RunSpec(
    **{
        **SPEC.__dict__,
        "install": InstallSpec(PackageMount("/cache/runs/abc", 300), ("six-1.17.0-py3-none-any.whl",), 60),
    }
)


def test_a_job_with_requirements_names_its_wheels_to_the_launcher() -> None:
    job = json.loads(job_header(WITH_WHEELS, nonce="n").partition(b"\n")[2])
    assert job["wheels"] == ["six-1.17.0-py3-none-any.whl"]


def test_requirements_mount_the_wheels_read_only_and_keep_the_network_off() -> None:
    options = container_options(WITH_WHEELS.shape, owner="h:1")
    assert options["network_disabled"] is True
    assert "network_mode" not in options
    [mount] = options["mounts"]
    assert mount["Target"] == "/wheels"
    assert mount["Source"] == "/cache/runs/abc"
    assert mount["Type"] == "bind"
    assert mount["ReadOnly"] is True
    packages = options["tmpfs"]["/packages"].split(",")
    assert "size=300m" in packages
    assert {"exec", "nosuid", "nodev"} <= set(packages)
    for noexec_mount in ("/work", "/tmp"):
        assert "noexec" in options["tmpfs"][noexec_mount].split(",")


def test_a_run_without_requirements_has_neither_wheels_nor_packages() -> None:
    options = container_options(SHAPE, owner="h:1")
    assert options["mounts"] == []
    assert set(options["tmpfs"]) == {"/work", "/tmp", "/dev/shm"}


def test_jobs_that_differ_only_in_time_output_or_content_share_a_shape() -> None:
    other = RunSpec(
        image=SPEC.image,
        archive=b"other",
        entrypoint="x.py",
        args=(),
        stdin=b"in",
        env={},
        limits=LIMITS.model_copy(update={"timeout_s": 5, "output_capture_kib": 1}),
    )
    assert other.shape == SHAPE
    smaller = RunSpec(**{**SPEC.__dict__, "limits": LIMITS.model_copy(update={"memory_mib": 64})})
    assert smaller.shape != SHAPE
    assert isinstance(SHAPE, ContainerShape)


def test_every_container_gets_a_new_name() -> None:
    assert container_options(SHAPE, owner="h:1")["name"] != container_options(SHAPE, owner="h:1")["name"]
