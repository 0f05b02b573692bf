"""Hints for a run that died on a missing module: parsing, the name table, profiles, policy, the note."""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from agent_sandbox.config import PackageSettings
from agent_sandbox.images.profiles import PROFILES, profiles_pinning
from agent_sandbox.models import ErrorInfo
from agent_sandbox.packages.missing import (
    DISTRIBUTIONS,
    MissingModule,
    missing_module,
    missing_note,
    refusal,
)

OFFERED = ["minimal", "datascience"]
SKLEARN = MissingModule(module="sklearn", distribution="scikit-learn", requirement="scikit-learn")


def note_for(missing: MissingModule, profile: str, offered: list[str], settings: PackageSettings) -> str:
    """The note, with the offered profiles that pin it found as the server finds them."""
    return missing_note(missing, profile, profiles_pinning(missing.distribution, offered), settings)


def error(message: str, type_: str = "ModuleNotFoundError") -> ErrorInfo:
    return ErrorInfo(type=type_, message=message, file="/work/main.py", line=1)


@pytest.mark.parametrize(
    ("message", "module", "distribution"),
    [
        ("No module named 'sklearn'", "sklearn", "scikit-learn"),
        ("No module named 'sklearn.linear_model'", "sklearn", "scikit-learn"),
        ("No module named 'google.protobuf'", "google", "google"),
        ("No module named 'cv2'", "cv2", "opencv-python-headless"),
        ("No module named 'PIL.Image'", "PIL", "pillow"),
        ("No module named 'yaml'", "yaml", "pyyaml"),
        ("No module named 'requests'", "requests", "requests"),
        ("No module named 'typing_extensions'", "typing_extensions", "typing_extensions"),
        ("No module named 'Levenshtein'", "Levenshtein", "Levenshtein"),
        ("No module named '_cffi_backend'", "_cffi_backend", "cffi"),
        ("  No module named 'six'\n", "six", "six"),
    ],
)
def test_the_module_and_its_distribution_are_read(message: str, module: str, distribution: str) -> None:
    assert missing_module(error(message)) == MissingModule(module, distribution, distribution)


@pytest.mark.parametrize(
    ("type_", "message"),
    [
        ("ImportError", "No module named 'sklearn'"),
        ("ModuleNotFoundError.x", "No module named 'sklearn'"),
        ("ImportError", "cannot import name 'foo' from 'bar' (/work/bar.py)"),
        ("ModuleNotFoundError", "No module named 'utils.x'; 'utils' is not a package"),
        ("ModuleNotFoundError", "No module named '.sibling'"),
        ("ModuleNotFoundError", "No module named ''"),
        ("ModuleNotFoundError", "No module named '1abc'"),
        ("ModuleNotFoundError", "No module named 'my-module'"),
        ("ModuleNotFoundError", "No module named 'naïve'"),
        ("ModuleNotFoundError", "No module named '_private'"),
        ("ModuleNotFoundError", "No module named 'trailing_'"),
        ("ModuleNotFoundError", "No module named 'tkinter'"),
        ("ModuleNotFoundError", "No module named '_tkinter'"),
        ("ModuleNotFoundError", "No module named sklearn"),
        ("ModuleNotFoundError", "something else entirely"),
        ("ModuleNotFoundError", ""),
    ],
)
def test_other_errors_and_unusable_names_give_nothing(type_: str, message: str) -> None:
    assert missing_module(error(message, type_)) is None


def test_no_error_gives_nothing() -> None:
    assert missing_module(None) is None


def test_the_table_maps_import_names_to_other_project_names() -> None:
    for module, distribution in DISTRIBUTIONS.items():
        assert module.isidentifier()
        assert "." not in module  # only top-level names are ever looked up
        assert canonicalize_name(module) != canonicalize_name(distribution)  # a real mismatch
        assert Requirement(distribution).name == distribution  # a plain, valid project name
    assert "google" not in DISTRIBUTIONS  # several projects share it
    assert DISTRIBUTIONS["sklearn"] == "scikit-learn"
    assert DISTRIBUTIONS["bs4"] == "beautifulsoup4"
    assert DISTRIBUTIONS["dateutil"] == "python-dateutil"


def test_profiles_are_found_by_their_pins() -> None:
    assert "scikit-learn==1.9.1" in PROFILES["datascience"].packages()  # what the lookups rely on
    assert profiles_pinning("scikit-learn", OFFERED) == ["datascience"]
    assert profiles_pinning("numpy", OFFERED) == ["datascience"]
    assert profiles_pinning("Scikit_Learn", OFFERED) == ["datascience"]  # compared canonicalised
    assert profiles_pinning("NumPy", ["datascience", "minimal", "datascience"]) == ["datascience"]


def test_profiles_not_offered_or_unknown_are_skipped() -> None:
    assert profiles_pinning("scikit-learn", ["minimal"]) == []
    assert profiles_pinning("scikit-learn", []) == []
    assert profiles_pinning("scikit-learn", ["gpu", "datascience"]) == ["datascience"]
    assert profiles_pinning("requests", OFFERED) == []
    assert profiles_pinning("six", OFFERED) == []  # at most a dependency of a pin: not counted


def test_an_allowed_requirement_is_not_refused() -> None:
    assert refusal(SKLEARN, PackageSettings()) is None
    assert refusal(SKLEARN, PackageSettings(allow=["Scikit_Learn"], deny=["six"])) is None


def test_refusals_carry_the_policys_reason() -> None:
    denied = refusal(SKLEARN, PackageSettings(deny=["scikit_learn"]))
    assert denied is not None
    assert "'scikit-learn' is denied" in denied
    not_allowed = refusal(SKLEARN, PackageSettings(allow=["six", "numpy"]))
    assert not_allowed is not None
    assert "not on this server's allow list (six, numpy)" in not_allowed
    off = refusal(SKLEARN, PackageSettings(enabled=False))
    assert off is not None
    assert "turned off" in off


def test_the_note_offers_the_requirement_and_the_profile() -> None:
    note = note_for(SKLEARN, "minimal", OFFERED, PackageSettings())
    assert note == (
        "The program needs the module 'sklearn', which is not installed in the 'minimal' profile; it "
        "comes from the distribution 'scikit-learn'. Add requirements=['scikit-learn'] to the call "
        "(installed offline for this run only), or run it with image='datascience', which has it."
    )


def test_the_note_leaves_out_profiles_that_do_not_have_it() -> None:
    note = note_for(SKLEARN, "minimal", ["minimal"], PackageSettings())
    assert "requirements=['scikit-learn']" in note
    assert "image=" not in note
    assert note.endswith("(installed offline for this run only).")
    six = MissingModule("six", "six", "six")
    note = note_for(six, "datascience", OFFERED, PackageSettings())
    assert note == (
        "The program needs the module 'six', which is not installed in the 'datascience' profile. "
        "Add requirements=['six'] to the call (installed offline for this run only)."
    )


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        (PackageSettings(deny=["scikit-learn"]), "'scikit-learn' is denied by this server's policy"),
        (PackageSettings(allow=["six"]), "not on this server's allow list (six)"),
        (PackageSettings(enabled=False), "per-run requirements are turned off on this server"),
    ],
)
def test_a_refused_requirement_is_not_suggested(settings: PackageSettings, reason: str) -> None:
    note = note_for(SKLEARN, "minimal", OFFERED, settings)
    assert "'sklearn'" in note
    assert "'scikit-learn'" in note
    assert "This server will not install it: " in note
    assert reason in note
    assert "requirements=" not in note
    assert note.endswith("Run it with image='datascience' instead, which has it.")
    alone = note_for(SKLEARN, "minimal", ["minimal"], settings)
    assert "image=" not in alone
    assert "requirements=" not in alone
    assert reason in alone


def test_the_note_when_the_current_profile_pins_it() -> None:
    note = note_for(SKLEARN, "datascience", OFFERED, PackageSettings())
    assert "'sklearn'" in note
    assert "'scikit-learn'" in note
    assert "the 'datascience' profile has its distribution 'scikit-learn'" in note
    assert "requirements=" not in note
    assert "image=" not in note
    numpy = MissingModule("numpy", "numpy", "numpy")
    assert "the 'datascience' profile has it;" in note_for(numpy, "datascience", OFFERED, PackageSettings())
