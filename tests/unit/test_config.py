"""Settings: the shipped TOML, environment overrides, and errors that name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent_sandbox.config import PROFILE_NAMES, ConfigError, Settings, load_settings
from agent_sandbox.images.profiles import PROFILES

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AGENT_SANDBOX_"):
            monkeypatch.delenv(name)


def assert_refused(tmp_path: Path, toml: str, pattern: str) -> None:
    """A config file holding ``toml`` is refused with an error matching ``pattern``."""
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=pattern):
        load_settings(path)


def test_default_toml_lists_every_setting_with_its_default() -> None:
    documented = tomllib.loads((CONFIGS / "default.toml").read_text())
    defaults = Settings().model_dump()
    assert documented == defaults


def test_every_shipped_config_loads() -> None:
    for path in CONFIGS.glob("*.toml"):
        load_settings(path)


def test_the_strict_profile_runs_gvisor_with_smaller_limits_no_requirements_and_a_pool() -> None:
    strict, default = load_settings(CONFIGS / "strict.toml"), Settings()
    assert strict.engine.runtime == "runsc"
    assert strict.engine.pool_size > 0
    assert not strict.packages.enabled
    assert strict.engine.network == ""
    for name, value in strict.limits.model_dump().items():
        assert value <= getattr(default.limits, name), f"limits.{name} is larger than the default"
    assert strict.limits.memory_mib < default.limits.memory_mib
    # gVisor's tmpfs is sandbox memory: a full /work must be reported as disk, not memory.
    assert strict.limits.work_mib + strict.limits.tmp_mib < strict.limits.memory_mib


def test_a_file_value_is_used(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[limits]\nmemory_mib = 256\n")
    assert load_settings(path).limits.memory_mib == 256


def test_the_environment_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[limits]\nmemory_mib = 256\ntimeout_s = 5\n")
    monkeypatch.setenv("AGENT_SANDBOX_LIMITS__MEMORY_MIB", "512")
    settings = load_settings(path)
    assert settings.limits.memory_mib == 512
    assert settings.limits.timeout_s == 5


def test_the_config_path_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[engine]\nprofile = "datascience"\nprofiles = ["datascience"]\n')
    monkeypatch.setenv("AGENT_SANDBOX_CONFIG", str(path))
    assert load_settings().engine.profile == "datascience"


def test_an_unknown_key_is_an_error_that_names_it(tmp_path: Path) -> None:
    assert_refused(tmp_path, "[limits]\nmemroy_mib = 256\n", r"limits\.memroy_mib")


def test_an_unknown_section_is_an_error_that_names_it(tmp_path: Path) -> None:
    assert_refused(tmp_path, "[limit]\nmemory_mib = 256\n", "limit")


def test_an_invalid_value_is_an_error_that_names_the_key(tmp_path: Path) -> None:
    assert_refused(tmp_path, "[limits]\npids = 0\n", r"limits\.pids.*greater than or equal to 8")


def test_an_invalid_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SANDBOX_LIMITS__CPUS", "many")
    with pytest.raises(ConfigError, match=r"limits\.cpus"):
        load_settings()


def test_a_misspelt_environment_override_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SANDBOX_LIMITS__MEMORY", "512")
    with pytest.raises(ConfigError, match="AGENT_SANDBOX_LIMITS__MEMORY"):
        load_settings()


def test_a_default_profile_outside_the_allowed_profiles_is_refused(tmp_path: Path) -> None:
    assert_refused(
        tmp_path, '[engine]\nprofile = "datascience"\n', r"'datascience' is not in engine\.profiles"
    )


def test_package_names_in_the_policy_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[packages]\nallow = ["Scikit_Learn"]\ndeny = ["Foo.Bar"]\n')
    packages = load_settings(path).packages
    assert packages.allow == ["scikit-learn"]
    assert packages.deny == ["foo-bar"]


def test_the_wheel_cache_defaults_to_the_users_cache_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert str(load_settings().packages.cache_path) == "/somewhere/cache/agent-sandbox"


def test_a_request_cap_too_small_for_the_files_limits_is_refused(tmp_path: Path) -> None:
    assert_refused(
        tmp_path, "[server]\nmax_request_kib = 1024\n", r"server\.max_request_kib must be at least"
    )


def test_the_auth_token_never_shows_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SANDBOX_SERVER__AUTH_TOKEN", "s3cret-token")
    settings = load_settings()
    assert settings.server.auth_token == "s3cret-token"
    assert "s3cret-token" not in repr(settings)


def test_inconsistent_limits_are_refused(tmp_path: Path) -> None:
    assert_refused(tmp_path, "[limits]\ntimeout_s = 500\n", "max_timeout_s")


def test_a_missing_or_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[limits\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)


def test_the_profiles_settings_accept_are_the_ones_the_images_define() -> None:
    assert set(PROFILE_NAMES) == set(PROFILES)
