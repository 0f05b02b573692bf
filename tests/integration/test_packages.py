"""Per-run requirements on the real engine and image, with wheels from the host's real package
index: installed offline, served from the cache, refused by policy or for want of a wheel."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import anyio
import docker
import pytest

from agent_sandbox.config import EngineSettings, PackageSettings, Settings
from agent_sandbox.engine.docker import OWNER_LABEL, DockerEngine
from agent_sandbox.images.profiles import get_profile
from agent_sandbox.models import ProjectFile, RunRequest
from agent_sandbox.packages.target import target_for
from agent_sandbox.sandbox import RequestError, Sandbox
from tests.helpers import cold_sandbox, snippet

pytestmark = pytest.mark.anyio

SIX = "import six; print('six', six.__version__)"


def make(engine: DockerEngine, cache: Path, **packages: object) -> Sandbox:
    return cold_sandbox(engine, packages=PackageSettings(cache_dir=str(cache), **packages))  # type: ignore[arg-type]


@pytest.fixture
def sandbox(engine: DockerEngine, tmp_path: Path) -> Sandbox:
    """A sandbox with an empty wheel cache of its own."""
    return make(engine, tmp_path / "cache")


async def test_a_requirement_is_installed_offline_and_imported(sandbox: Sandbox) -> None:
    result = await sandbox.run(snippet(SIX, requirements=["six"]))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("six 1.")
    assert result.stderr == ""
    install = result.install
    assert install is not None
    assert install.ok
    assert install.requirements == ["six"]
    assert [w.split("-")[0] for w in install.wheels] == ["six"]
    assert not install.from_cache
    assert "six" in install.output  # the installer's words stay out of the program's output
    assert "Installed" not in result.stdout + result.stderr
    assert result.notes == []


async def test_the_same_requirement_again_comes_from_the_host_cache(sandbox: Sandbox) -> None:
    first = await sandbox.run(snippet(SIX, requirements=["six"]))
    second = await sandbox.run(snippet(SIX, requirements=["six"]))
    assert first.install is not None
    assert second.install is not None
    assert not first.install.from_cache
    assert second.install.from_cache
    assert second.install.wheels == first.install.wheels
    assert second.install.resolve_s < 0.1 < first.install.resolve_s  # no pip at all
    assert second.stdout == first.stdout
    runs = sandbox.wheels.cache.runs
    assert list(runs.iterdir()) == []  # each run's wheel folder is gone with it


async def test_run_project_honours_a_requirements_txt(sandbox: Sandbox) -> None:
    request = RunRequest(
        files=[
            ProjectFile(path="main.py", content=SIX),
            ProjectFile(path="requirements.txt", content="# for main.py\nsix>=1.16\n"),
        ]
    )
    result = await sandbox.run(request)
    assert result.exit_code == 0, result.stderr
    assert result.install is not None
    assert result.install.requirements == ["six>=1.16"]


async def test_a_denied_package_is_refused_before_anything_is_fetched(
    engine: DockerEngine, tmp_path: Path
) -> None:
    sandbox = make(engine, tmp_path / "cache", deny=["six"])
    with pytest.raises(RequestError, match="package 'six' is denied by this server's policy"):
        await sandbox.run(snippet(SIX, requirements=["six==1.17.0"]))
    assert not (tmp_path / "cache").exists()  # pip never ran


async def test_a_denied_dependency_is_refused_by_name(engine: DockerEngine, tmp_path: Path) -> None:
    sandbox = make(engine, tmp_path / "cache", deny=["six"])
    with pytest.raises(RequestError, match=r"package 'six' is denied .* depends on it"):
        await sandbox.run(snippet("pass", requirements=["python-dateutil==2.9.0.post0"]))


async def test_turned_off_requirements_are_refused(engine: DockerEngine, tmp_path: Path) -> None:
    sandbox = make(engine, tmp_path / "cache", enabled=False)
    with pytest.raises(RequestError, match="per-run requirements are turned off"):
        await sandbox.run(snippet(SIX, requirements=["six"]))


async def test_a_package_with_no_wheel_is_refused_saying_why(sandbox: Sandbox) -> None:
    # docopt has only ever been published as a source distribution.
    with pytest.raises(RequestError, match=r"'docopt': docopt has no wheel .* only source distributions"):
        await sandbox.run(snippet("import docopt", requirements=["docopt"]))


async def test_an_unknown_package_or_version_is_refused_saying_which(sandbox: Sandbox) -> None:
    with pytest.raises(RequestError, match="no project called 'no-such-package-agent-sandbox'"):
        await sandbox.run(snippet("pass", requirements=["no-such-package-agent-sandbox"]))
    with pytest.raises(RequestError, match=r"'six==99': no release .* releases with one: .*1\.17\.0"):
        await sandbox.run(snippet("pass", requirements=["six==99"]))


async def test_requirements_whose_markers_exclude_them_install_nothing(sandbox: Sandbox) -> None:
    result = await sandbox.run(snippet("print('ran')", requirements=['tomli; python_version < "3.11"']))
    assert result.stdout == "ran\n"
    assert result.install is not None
    assert result.install.ok
    assert result.install.wheels == []


MOUNTS = """
import errno, json, os
mounts = {line.split()[1]: line.split()[3].split(",") for line in open("/proc/mounts")}
try:
    open("/wheels/new", "w")
    wheels = "writable"
except OSError as exc:
    wheels = errno.errorcode[exc.errno]
import numpy
print(json.dumps({
    "sum": int(numpy.arange(4).sum()),
    "packages": mounts["/packages"], "work": mounts["/work"], "wheels": mounts["/wheels"],
    "wheels_write": wheels, "interfaces": sorted(name for _, name in __import__("socket").if_nameindex()),
}))
"""


async def test_a_c_extension_loads_from_packages_while_work_stays_noexec(sandbox: Sandbox) -> None:
    result = await sandbox.run(snippet(MOUNTS, requirements=["numpy"]))
    assert result.exit_code == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["sum"] == 6
    assert "noexec" not in seen["packages"]
    assert {"nosuid", "nodev"} <= set(seen["packages"])
    assert "noexec" in seen["work"]
    assert "ro" in seen["wheels"]
    assert seen["wheels_write"] == "EROFS"
    assert seen["interfaces"] == ["lo"]


async def test_the_sandbox_has_no_network_while_installing(
    sandbox: Sandbox, docker_client: docker.DockerClient
) -> None:
    """Catch the installer (uv) at work inside the run's container and read, from the host, the
    network devices its own process sees: only loopback. pandas and numpy take about a second
    to install here, long enough to catch."""
    seen: dict[str, object] = {}

    async def inspect_the_installer() -> None:
        mine = {"label": f"{OWNER_LABEL}={sandbox.engine.owner}"}
        with anyio.fail_after(60):
            while not (containers := docker_client.containers.list(filters=mine)):
                await anyio.sleep(0.01)
            container = containers[0]
            seen["network_disabled"] = container.attrs["Config"].get("NetworkDisabled")
            seen["networks"] = container.attrs["NetworkSettings"]["Networks"]
            seen["mounts"] = [(m["Destination"], m["RW"]) for m in container.attrs["Mounts"]]
            while "devices" not in seen:
                for process in (await anyio.to_thread.run_sync(container.top))["Processes"]:
                    if "uv pip install" in process[-1]:
                        proc = Path("/proc") / process[1]
                        devices = (proc / "net" / "dev").read_text()
                        if "uv" in (proc / "cmdline").read_text():  # still the installer
                            seen["devices"] = devices
                await anyio.sleep(0.01)

    async with anyio.create_task_group() as group:
        group.start_soon(inspect_the_installer)
        result = await sandbox.run(snippet("import pandas", requirements=["pandas"]))
    assert result.exit_code == 0, result.stderr
    assert result.install is not None
    assert result.install.ok
    interfaces = {line.split(":")[0].strip() for line in str(seen["devices"]).splitlines()[2:]}
    assert interfaces == {"lo"}
    assert seen["network_disabled"] is True
    assert seen["networks"] == {}
    assert seen["mounts"] == [("/wheels", False)]


async def test_a_run_with_requirements_starts_cold_and_leaves_the_pool_alone(
    engine: DockerEngine, tmp_path: Path
) -> None:
    settings = Settings(engine=EngineSettings(pool_size=1), packages=PackageSettings(cache_dir=str(tmp_path)))
    async with Sandbox(settings, engine) as sandbox:
        assert sandbox.pool is not None
        await sandbox.pool.filled()
        with_requirements = await sandbox.run(snippet(SIX, requirements=["six"]))
        assert sandbox.pool.ready == 1
        without = await sandbox.run(snippet("print('hi')"))
    assert not with_requirements.warm_start
    assert with_requirements.stdout.startswith("six 1.")
    assert without.warm_start


async def test_a_cancelled_run_leaves_neither_container_nor_wheel_folder(sandbox: Sandbox) -> None:
    async def until_running(stage: str) -> None:
        if stage == "installing":  # a run with requirements installs, then runs, in one stage
            group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(
            sandbox.run, snippet("import time; time.sleep(60)", requirements=["six"]), until_running
        )
    assert list(sandbox.wheels.cache.runs.iterdir()) == []
    with anyio.fail_after(10):
        while sandbox.engine.our_containers():
            await anyio.sleep(0.1)


async def test_the_programs_time_limit_starts_after_the_install(sandbox: Sandbox) -> None:
    result = await sandbox.run(snippet("print('ran')", requirements=["pandas"], limits={"timeout_s": 0.3}))
    assert result.install is not None
    assert result.install.install_s > 0.3  # else this test shows nothing (pandas: about 1 s here)
    assert not result.timed_out
    assert result.stdout == "ran\n"


async def test_an_install_that_runs_out_of_time_is_reported_and_the_program_never_runs(
    engine: DockerEngine, tmp_path: Path
) -> None:
    sandbox = make(engine, tmp_path / "cache", install_timeout_s=0.05)
    result = await sandbox.run(snippet("print('ran')", requirements=["numpy"]))
    assert result.stdout == ""
    assert result.exit_code is None
    assert result.timed_out
    assert result.install is not None
    assert not result.install.ok
    assert [v.limit for v in result.violations] == ["0.05 s to install"]
    assert "the program did not run" in result.notes[0]


@pytest.mark.parametrize("profile", ["minimal", "datascience", "minimal-3.13", "datascience-3.13"])
async def test_each_profile_is_the_platform_wheels_are_fetched_for(
    engine: DockerEngine, profile: str
) -> None:
    settings = Settings(engine=EngineSettings(pool_size=0, profile=profile, profiles=[profile]))
    code = "import os, platform, sys; print(sys.version_info[:2], os.confstr('CS_GNU_LIBC_VERSION'), platform.machine())"
    result = await Sandbox(settings, engine).run(snippet(code))
    target = target_for(get_profile(profile).python)
    major, minor = target.glibc
    python = tuple(int(part) for part in target.python.split("."))
    assert result.stdout == f"{python} glibc {major}.{minor} {platform.machine()}\n"
    assert result.profile == profile


# networkx 3.7's only wheel is pure Python and needs Python >= 3.12 (tests/integration/test_resolver.py).
NETWORKX = "import networkx, sys; print(sys.version_info[:2], networkx.__version__)"


async def test_a_package_for_python_312_and_later_installs_on_313_and_is_refused_on_311(
    engine: DockerEngine, tmp_path: Path
) -> None:
    settings = Settings(
        engine=EngineSettings(pool_size=0, profiles=["minimal", "minimal-3.13"]),
        packages=PackageSettings(cache_dir=str(tmp_path / "cache")),
    )
    sandbox = Sandbox(settings, engine)
    result = await sandbox.run(snippet(NETWORKX, requirements=["networkx==3.7"], profile="minimal-3.13"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "(3, 13) 3.7\n"
    assert result.install is not None
    assert result.install.wheels == ["networkx-3.7-py3-none-any.whl"]
    refusal = (
        r"requirement 'networkx==3\.7': no release that matches it has a wheel for the sandbox "
        r"\(CPython 3\.11 .*\): networkx==3\.7 requires Python >=3\.12.*; releases with one: .*3\.6\.1"
    )
    with pytest.raises(RequestError, match=refusal):
        await sandbox.run(snippet(NETWORKX, requirements=["networkx==3.7"], profile="minimal"))
