"""Per-run requirements: parsing, policy, wheel targets and the cache (no engine, no index)."""

from __future__ import annotations

import hashlib
import os
import stat
import time
import tomllib
from pathlib import Path

import pytest

from agent_sandbox.config import PackageSettings
from agent_sandbox.images.profiles import INSTALLER_REQUIREMENT, PROFILES
from agent_sandbox.packages.cache import CachedWheel, WheelCache
from agent_sandbox.packages.policy import check_requested, check_resolved
from agent_sandbox.packages.requirements import PackageRefused, parse_requirements, requirements_file
from agent_sandbox.packages.resolver import (
    DEFAULT_INDEX,
    read_pip_config,
    resolution_key,
    uv_cause,
    uv_culprit,
    uv_index_options,
)
from agent_sandbox.packages.target import TARGETS, WheelTarget, target_for

SIX = "six-1.17.0-py2.py3-none-any.whl"


@pytest.mark.parametrize(
    "spec", ["six", "pandas>=2,<3", "Requests[socks]==2.32.0", 'tomli; python_version < "3.11"', " six "]
)
def test_named_requirements_are_accepted(spec: str) -> None:
    [requirement] = parse_requirements([spec])
    assert requirement.name.lower() in spec.lower()


def test_duplicates_are_dropped() -> None:
    assert [str(r) for r in parse_requirements(["six", "six", "six>=1"])] == ["six", "six>=1"]


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("six @ https://example.invalid/six.whl", "points at a URL or file"),
        ("--index-url=https://evil.invalid/simple", "is a pip option"),
        ("-e .", "is a pip option"),
        ("./local/package", "not a valid requirement"),
        ("evil.tar.gz", "points at a URL or file"),
        ("evil.zip", "points at a URL or file"),
        ("other-1.0-py3-none-any.whl", "points at a URL or file"),
        ("six==", "not a valid requirement"),
        ("", "empty"),
        ("a" * 201, "longer than 200"),
    ],
)
def test_anything_but_a_named_package_is_refused_by_name(spec: str, reason: str) -> None:
    with pytest.raises(PackageRefused, match=reason) as refused:
        parse_requirements([spec])
    assert repr(spec)[:40] in str(refused.value)


def test_a_requirements_file_gives_its_requirements_without_comments() -> None:
    text = "# data\nsix==1.17.0  # pinned\n\npandas>=2\n\t\n"
    assert requirements_file(text) == ["six==1.17.0", "pandas>=2"]


@pytest.mark.parametrize("line", ["-r other.txt", "--extra-index-url https://x.invalid", "-e ."])
def test_option_lines_in_a_requirements_file_are_refused_with_their_line_number(line: str) -> None:
    with pytest.raises(PackageRefused, match=r"requirements\.txt line 2 .* is a pip option"):
        requirements_file(f"six\n{line}\n")


def wheel(filename: str, size: int = 1000) -> CachedWheel:
    return CachedWheel(filename, "0" * 64, size, Path("/nowhere") / filename)


def test_turned_off_requirements_are_refused_but_no_requirements_are_fine() -> None:
    off = PackageSettings(enabled=False)
    check_requested([], off)
    with pytest.raises(PackageRefused, match="turned off"):
        check_requested(parse_requirements(["six"]), off)


def test_a_denied_package_is_refused_by_any_spelling() -> None:
    settings = PackageSettings(deny=["python-dateutil"])
    with pytest.raises(PackageRefused, match="'Python_DateUtil' is denied"):
        check_requested(parse_requirements(["Python_DateUtil>=2"]), settings)


def test_a_denied_dependency_is_refused_after_resolution() -> None:
    settings = PackageSettings(deny=["python-dateutil"])
    wheels = [
        wheel("pandas-2.3.3-cp311-cp311-manylinux_2_28_x86_64.whl"),
        wheel("python_dateutil-4.0.0-py3-none-any.whl"),
    ]
    with pytest.raises(PackageRefused, match=r"'python-dateutil' is denied .* depends on it"):
        check_resolved(wheels, settings)


def test_the_allow_list_names_what_may_be_asked_for() -> None:
    settings = PackageSettings(allow=["six"])
    check_requested(parse_requirements(["SIX==1.17.0"]), settings)
    with pytest.raises(PackageRefused, match=r"'numpy' is not on this server's allow list \(six\)"):
        check_requested(parse_requirements(["numpy"]), settings)


def test_caps_on_requirements_wheels_and_size() -> None:
    settings = PackageSettings(max_requirements=1, max_wheels=2, max_total_mib=1)
    with pytest.raises(PackageRefused, match="2 requirements asked for, more than the 1"):
        check_requested(parse_requirements(["six", "attrs"]), settings)
    with pytest.raises(PackageRefused, match="3 wheels, more than the 2"):
        check_resolved([wheel(SIX), wheel("a-1-py3-none-any.whl"), wheel("b-1-py3-none-any.whl")], settings)
    with pytest.raises(PackageRefused, match="2 MiB of wheels, more than the 1 MiB"):
        check_resolved([wheel(SIX, size=2 * 1024 * 1024)], settings)


def test_the_target_accepts_every_older_manylinux_and_nothing_newer() -> None:
    target = WheelTarget(python="3.11", glibc=(2, 36), machine="x86_64")
    platforms = target.platforms()
    assert platforms[0] == "manylinux_2_36_x86_64"
    assert {"manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(platforms)
    assert "manylinux_2_37_x86_64" not in platforms
    options = target.pip_options()
    assert options[0] == "--only-binary=:all:"  # never a source distribution
    assert options[options.index("--python-version") + 1] == "3.11"
    assert {"cp311", "abi3", "none"} == {options[i + 1] for i, o in enumerate(options) if o == "--abi"}


def add_wheel(cache: WheelCache, tmp_path: Path, name: str = SIX, data: bytes = b"zip") -> CachedWheel:
    download = tmp_path / "download"
    download.mkdir(exist_ok=True)
    (download / name).write_bytes(data)
    return cache.add(download / name)


def test_wheels_are_stored_by_hash_and_readable_by_the_sandbox_user(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "cache")
    stored = add_wheel(cache, tmp_path)
    assert stored.path == cache.wheels / stored.sha256 / SIX
    assert stored.sha256 == hashlib.sha256(b"zip").hexdigest()
    assert stored.name == "six"
    assert stat.S_IMODE(stored.path.stat().st_mode) == 0o644


def test_a_resolution_is_recalled_until_it_expires_or_a_wheel_goes(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "cache")
    stored = add_wheel(cache, tmp_path)
    cache.remember("k", ["six"], [stored])
    assert cache.recall("k", max_age_s=60) == [stored]
    assert cache.recall("other", max_age_s=60) is None
    time.sleep(0.01)
    assert cache.recall("k", max_age_s=0) is None
    stored.path.unlink()
    assert cache.recall("k", max_age_s=60) is None


def test_a_run_sees_exactly_its_wheels_and_the_folder_goes_afterwards(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "cache")
    six = add_wheel(cache, tmp_path)
    add_wheel(cache, tmp_path, "other-1.0-py3-none-any.whl", b"other")
    with cache.staged([six]) as folder:
        assert sorted(os.listdir(folder)) == [SIX]
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
        assert (folder / SIX).stat().st_ino == six.path.stat().st_ino  # a link, not a copy
    assert not folder.exists()


def test_run_and_download_folders_a_crash_left_behind_are_removed(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "cache")
    stale_run = cache.runs / "dead"
    stale_run.mkdir(parents=True)
    stale_download = cache.root / "download-dead"
    stale_download.mkdir()
    for stale in (stale_run, stale_download):
        os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = cache.runs / "live"
    fresh.mkdir()
    assert cache.remove_stale(older_than_s=600) == 2
    assert not stale_run.exists()
    assert not stale_download.exists()
    assert fresh.exists()


TARGET = WheelTarget(python="3.11", glibc=(2, 36), machine="x86_64")


def test_the_cache_key_ignores_spelling_and_order() -> None:
    key = resolution_key(parse_requirements(["Six>=1", "python_dateutil[Extra_A]"]), TARGET)
    assert key == resolution_key(parse_requirements(["python-dateutil[extra-a]", "six>=1"]), TARGET)
    assert key != resolution_key(parse_requirements(["six>=2", "python-dateutil[extra-a]"]), TARGET)
    other_target = WheelTarget(python="3.12", glibc=(2, 36), machine="x86_64")
    assert key != resolution_key(parse_requirements(["six>=1", "python-dateutil[extra-a]"]), other_target)


def test_each_profile_has_the_target_of_its_python() -> None:
    assert {profile.python for profile in PROFILES.values()} <= set(TARGETS)
    assert target_for("3.11").glibc == (2, 36)  # bookworm
    assert target_for("3.13").glibc == (2, 41)  # trixie
    with pytest.raises(ValueError, match=r"no wheel target for Python '3\.99'"):
        target_for("3.99")


@pytest.mark.parametrize(
    ("glibc", "platform"),
    [
        ((2, 36), "x86_64-manylinux_2_36"),
        ((2, 41), "x86_64-manylinux_2_40"),
        ((2, 17), "x86_64-manylinux_2_17"),
    ],
)
def test_uv_resolves_for_the_newest_glibc_it_knows_up_to_the_targets(
    glibc: tuple[int, int], platform: str
) -> None:
    assert WheelTarget(python="3.13", glibc=glibc, machine="x86_64").uv_platform() == platform


def test_the_host_resolves_with_the_uv_release_the_images_install_with() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert INSTALLER_REQUIREMENT in pyproject["project"]["dependencies"]


PIP_CONFIG = """\
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
global.index-url='https://global.invalid/simple'
download.index-url='https://download.invalid/simple'
install.index-url='https://install.invalid/simple'
:env:.find-links='/srv/wheels'
:env:.trusted-host='mirror.invalid'
:env:.default-timeout='180'
"""


def test_uv_is_given_the_index_pip_download_would_use() -> None:
    config = read_pip_config(PIP_CONFIG)
    assert config["index-url"] == "https://download.invalid/simple"  # [download] over [global]
    assert config["find-links"] == "/srv/wheels"  # PIP_FIND_LINKS over both
    options, env = uv_index_options(config)
    pairs = list(zip(options[::2], options[1::2], strict=True))
    assert pairs == [
        ("--index-url", "https://download.invalid/simple"),
        ("--index-strategy", "unsafe-best-match"),  # pip's choice: the best version on any index
        ("--extra-index-url", "file:///opt/pypi/simple"),
        ("--extra-index-url", "file:///opt/pypi-more/simple"),
        ("--find-links", "/srv/wheels"),
        ("--allow-insecure-host", "mirror.invalid"),
    ]
    assert env == {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt", "UV_HTTP_TIMEOUT": "180"}


def test_without_pip_configuration_uv_uses_the_default_index() -> None:
    assert uv_index_options(read_pip_config("")) == (
        ["--index-url", DEFAULT_INDEX, "--index-strategy", "unsafe-best-match"],
        {},
    )
    assert "--no-index" in uv_index_options({"no-index": "true"})[0]


# What uv 0.13.9 prints when it finds no solution (tests/integration/test_resolver.py asks it).
NEEDS_PYTHON = """\
error: No solution found when resolving dependencies
  cause: Because the requested Python version (>=3.11) does not satisfy all of:
             Python>=3.12,<3.14.1
             Python>3.14.1
         and networkx==3.7 depends on one of:
             Python>=3.12,<3.14.1
             Python>3.14.1
         we can conclude that networkx==3.7 cannot be used.
         And because only networkx<=3.7 is available and you require networkx==3.7, we can conclude \
that your requirements are unsatisfiable.

hint: The `--python-version` value (>=3.11) includes Python versions that are not supported by your \
dependencies (e.g., networkx==3.7 only supports >=3.12, <3.14.1 | >3.14.1). Consider using a higher \
`--python-version` value.
"""


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (NEEDS_PYTHON, ("networkx==3.7", False)),
        (
            "  cause: Because the requested Python version (>=3.11) does not satisfy Python>=3.12 and "
            "django==6.0 depends on Python>=3.12, we can conclude that django==6.0 cannot be used.",
            ("django==6.0", False),
        ),
        (
            "  cause: Because all versions of docopt have no usable wheels and you require docopt, we "
            "can conclude that your requirements are unsatisfiable.",
            ("docopt", False),
        ),
        (
            "  cause: Because numpy==1.26.4 has no usable wheels and you require numpy==1.26.4, we can "
            "conclude that your requirements are unsatisfiable.",
            ("numpy==1.26.4", False),
        ),
        (
            "  cause: Because no-such-package was not found in the package registry and you require "
            "no-such-package, we can conclude that your requirements are unsatisfiable.",
            ("no-such-package", True),
        ),
        (
            "  cause: Because there is no version of six==99 and you require six==99, we can conclude "
            "that your requirements are unsatisfiable.",
            ("six==99", False),
        ),
        (
            "  cause: Because only six<=1.17.0 is available and you require six>=99, we can conclude "
            "that your requirements are unsatisfiable.",
            ("six>=99", False),
        ),
        ("error: the argument '--x' cannot be used with '--y'", None),
    ],
)
def test_uvs_no_solution_error_names_the_requirement(output: str, expected: tuple[str, bool] | None) -> None:
    assert uv_culprit(uv_cause(output)) == expected


def test_uvs_reasoning_is_read_as_one_line_without_its_hint() -> None:
    cause = uv_cause(NEEDS_PYTHON)
    assert cause.startswith(
        "Because the requested Python version (>=3.11) does not satisfy all of: Python>=3.12"
    )
    assert cause.endswith("we can conclude that your requirements are unsatisfiable.")
    assert "hint" not in cause


def test_the_least_recently_used_wheels_are_trimmed_first(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "cache")
    old = add_wheel(cache, tmp_path, "old-1-py3-none-any.whl", b"o" * 100)
    used = add_wheel(cache, tmp_path, "used-1-py3-none-any.whl", b"u" * 100)
    new = add_wheel(cache, tmp_path, "new-1-py3-none-any.whl", b"n" * 100)
    for age, wheel in ((300, old), (200, used), (100, new)):
        os.utime(wheel.path, (time.time() - age, time.time() - age))
    cache.remember("k", ["used"], [used])
    assert cache.recall("k", max_age_s=60) == [used]  # marks it as just used
    assert cache.trim(max_bytes=200, keep=[]) == 1
    assert not old.path.exists()
    assert used.path.exists()
    assert new.path.exists()
    assert cache.trim(max_bytes=0, keep=[new]) == 1
    assert new.path.exists()
