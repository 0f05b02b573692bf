"""The wheel resolver against the host's real package index, for each sandbox Python: markers are
evaluated, and Requires-Python honoured, for the sandbox's version, not the host's (no engine)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from agent_sandbox.errors import PackageRefused
from agent_sandbox.packages.cache import CachedWheel, WheelCache
from agent_sandbox.packages.requirements import parse_requirements
from agent_sandbox.packages.resolver import WheelResolver
from agent_sandbox.packages.target import target_for

pytestmark = pytest.mark.anyio

# networkx 3.7 is pure Python with no dependencies, and needs Python >= 3.12 (its only wheel is
# networkx-3.7-py3-none-any.whl, Requires-Python ">=3.12,!=3.14.1"); 3.6.1 is the newest for 3.11.
NEEDS_312 = "networkx==3.7"


@pytest.fixture
def resolver(tmp_path: Path) -> WheelResolver:
    return WheelResolver(
        WheelCache(tmp_path / "cache"), timeout_s=120, max_age_s=600, max_download_mib=50, max_cache_mib=100
    )


def names(wheels: Sequence[CachedWheel]) -> list[str]:
    return sorted(wheel.filename.split("-")[0] for wheel in wheels)


@pytest.mark.parametrize(("python", "expected"), [("3.11", ["tomli"]), ("3.13", [])])
async def test_a_requirements_marker_is_evaluated_for_the_sandboxes_python(
    resolver: WheelResolver, python: str, expected: list[str]
) -> None:
    requirements = parse_requirements(['tomli==2.2.1; python_version < "3.12"'])
    resolution = await resolver.resolve(requirements, target_for(python))
    assert names(resolution.wheels) == expected


@pytest.mark.parametrize(
    ("python", "expected"),
    [("3.11", ["anyio", "idna", "sniffio", "typing_extensions"]), ("3.13", ["anyio", "idna", "sniffio"])],
)
async def test_a_dependencys_marker_is_evaluated_for_the_sandboxes_python(
    resolver: WheelResolver, python: str, expected: list[str]
) -> None:
    # anyio 4.11.0 needs typing_extensions on Python < 3.13 only.
    resolution = await resolver.resolve(parse_requirements(["anyio==4.11.0"]), target_for(python))
    assert names(resolution.wheels) == expected
    abi = "cp" + python.replace(".", "")
    assert all(w.filename.endswith("-none-any.whl") or abi in w.filename for w in resolution.wheels)


async def test_a_package_for_python_312_and_later_resolves_for_313(resolver: WheelResolver) -> None:
    resolution = await resolver.resolve(parse_requirements([NEEDS_312]), target_for("3.13"))
    assert [wheel.filename for wheel in resolution.wheels] == ["networkx-3.7-py3-none-any.whl"]


async def test_a_package_for_python_312_and_later_is_refused_for_311_saying_why(
    resolver: WheelResolver,
) -> None:
    with pytest.raises(PackageRefused) as refused:
        await resolver.resolve(parse_requirements([NEEDS_312]), target_for("3.11"))
    message = str(refused.value)
    assert message.startswith("requirement 'networkx==3.7': no release that matches it has a wheel for ")
    assert "(CPython 3.11 on Linux" in message
    assert "networkx==3.7 requires Python >=3.12" in message
    assert "releases with one: " in message
    assert "3.6.1" in message
    assert "3.7" not in message.partition("releases with one: ")[2]


async def test_a_c_extension_resolves_to_the_wheel_of_the_sandboxes_abi(resolver: WheelResolver) -> None:
    for python, abi in (("3.11", "cp311"), ("3.13", "cp313")):
        resolution = await resolver.resolve(parse_requirements(["markupsafe==3.0.2"]), target_for(python))
        [wheel] = resolution.wheels
        assert f"-{abi}-{abi}-manylinux" in wheel.filename


async def test_the_same_requirements_are_cached_per_python(resolver: WheelResolver) -> None:
    first = await resolver.resolve(parse_requirements(["markupsafe==3.0.2"]), target_for("3.11"))
    other = await resolver.resolve(parse_requirements(["markupsafe==3.0.2"]), target_for("3.13"))
    again = await resolver.resolve(parse_requirements(["markupsafe==3.0.2"]), target_for("3.11"))
    assert not first.from_cache
    assert not other.from_cache
    assert again.from_cache
    assert again.wheels == first.wheels != other.wheels
