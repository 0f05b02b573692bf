"""Image profiles and their Pythons: the 3.13 profiles share the 3.11 ones' folders and pins and
build on Debian trixie; the image build picks each profile's base by its Debian release."""

from __future__ import annotations

from typing import Any

import docker.errors
import pytest

from agent_sandbox.config import PROFILE_NAMES, EngineSettings
from agent_sandbox.images import build
from agent_sandbox.images.profiles import DEBIAN_RELEASES, PROFILES, get_profile
from agent_sandbox.packages.target import TARGETS


def test_the_313_profiles_are_the_311_ones_on_trixie() -> None:
    for name in ("minimal", "datascience"):
        old, new = get_profile(name), get_profile(f"{name}-3.13")
        assert (old.python, old.debian) == ("3.11", "bookworm")
        assert (new.python, new.debian) == ("3.13", "trixie")
        assert new.folder == old.folder  # one Dockerfile, one list of pins
        assert new.packages() == old.packages()
        assert new.summary.startswith("CPython 3.13 ")
        assert new.summary.removeprefix("CPython 3.13 ") == old.summary.removeprefix("CPython 3.11 ")
    assert get_profile("datascience-3.13").base_profile == "minimal-3.13"


@pytest.mark.parametrize("profile", PROFILES.values(), ids=list(PROFILES))
def test_a_profile_has_the_python_of_the_profile_it_builds_on_and_a_wheel_target(profile: Any) -> None:
    if profile.base_profile is not None:
        assert get_profile(profile.base_profile).python == profile.python
    assert profile.python in DEBIAN_RELEASES
    assert profile.python in TARGETS  # its wheels are resolved for its own Python
    assert (profile.folder / "Dockerfile").is_file()
    assert profile.describe().startswith(f"'{profile.name}' (CPython {profile.python} ")


def test_the_313_profiles_are_accepted_by_the_settings() -> None:
    assert {"minimal-3.13", "datascience-3.13"} <= set(PROFILE_NAMES)
    settings = EngineSettings(profile="minimal-3.13", profiles=["minimal-3.13", "datascience-3.13"])
    assert settings.image_of("datascience-3.13") == "agent-sandbox:datascience-3.13"
    with pytest.raises(ValueError, match=r"unknown image profile 'minimal-3\.12'"):
        EngineSettings(profiles=["minimal", "minimal-3.12"])


def test_each_debian_release_has_its_public_and_bootstrapped_base() -> None:
    assert build.public_base(get_profile("minimal")) == "python:3.11-slim-bookworm"
    assert build.public_base(get_profile("minimal-3.13")) == "python:3.13-slim-trixie"
    assert build.bootstrap_base_tag("bookworm") == "agent-sandbox-base:bookworm"
    assert build.bootstrap_base_tag("trixie") == "agent-sandbox-base:trixie"


class _Images:
    def __init__(self, present: set[str]):
        self.present = present
        self.pulled: list[str] = []

    def get(self, name: str) -> object:
        if name not in self.present:
            raise docker.errors.ImageNotFound(name)
        return object()

    def pull(self, name: str) -> None:
        self.pulled.append(name)
        raise docker.errors.APIError("no registry")


class _Client:
    def __init__(self, *present: str):
        self.images = _Images(set(present))


def test_the_base_is_the_profiles_release_public_or_bootstrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrapped: list[str] = []
    monkeypatch.setattr(build, "bootstrap_base", lambda client, suite: bootstrapped.append(suite))
    trixie = get_profile("minimal-3.13")
    # A bookworm base never stands in for trixie's, nor the other way round.
    client: Any = _Client("python:3.11-slim-bookworm", "agent-sandbox-base:bookworm")
    assert build._choose_base(client, trixie) == "agent-sandbox-base:trixie"
    assert client.images.pulled == ["python:3.13-slim-trixie"]
    assert bootstrapped == ["trixie"]
    client = _Client("agent-sandbox-base:trixie")
    assert build._choose_base(client, trixie) == "agent-sandbox-base:trixie"
    assert build._choose_base(_Client("python:3.13-slim-trixie"), trixie) == "python:3.13-slim-trixie"
    assert build._choose_base(client, get_profile("minimal")) == "agent-sandbox-base:bookworm"
    assert bootstrapped == ["trixie", "bookworm"]
