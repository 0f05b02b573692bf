"""What to tell a model whose run died on ``ModuleNotFoundError: No module named 'X'``: which
distribution provides ``X``, whether this server would install it, and which image profile has
it already (as the caller found it). Pure: no engine, no index."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from packaging.utils import canonicalize_name

from agent_sandbox.config import PackageSettings
from agent_sandbox.errors import PackageRefused
from agent_sandbox.models import ErrorInfo
from agent_sandbox.packages.policy import check_requested
from agent_sandbox.packages.requirements import parse_requirements

# Import names whose distribution on PyPI has another name. Only unambiguous pairs: a name that
# several projects provide (``google``, ``multipart``) is left out, and a name that is its own
# distribution (``Levenshtein``, ``typing_extensions``) needs no entry.
DISTRIBUTIONS: dict[str, str] = {
    "Bio": "biopython",
    "Crypto": "pycryptodome",
    "Cryptodome": "pycryptodomex",
    "MySQLdb": "mysqlclient",
    "OpenGL": "PyOpenGL",
    "OpenSSL": "pyopenssl",
    "PIL": "pillow",
    "_cffi_backend": "cffi",
    "absl": "absl-py",
    "attr": "attrs",
    "bs4": "beautifulsoup4",
    "cairo": "pycairo",
    "cv2": "opencv-python-headless",  # no display in the sandbox: the build without GUI libraries
    "dateutil": "python-dateutil",
    "dns": "dnspython",
    "docx": "python-docx",
    "dotenv": "python-dotenv",
    "faiss": "faiss-cpu",
    "fitz": "pymupdf",
    "gi": "PyGObject",
    "git": "GitPython",
    "googleapiclient": "google-api-python-client",
    "grpc": "grpcio",
    "jose": "python-jose",
    "jwt": "PyJWT",
    "magic": "python-magic",
    "markdown_it": "markdown-it-py",
    "nacl": "PyNaCl",
    "pdfminer": "pdfminer.six",
    "pkg_resources": "setuptools",
    "pptx": "python-pptx",
    "psycopg2": "psycopg2-binary",  # wheels only here: the build that needs no compiler
    "serial": "pyserial",
    "shapefile": "pyshp",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "slugify": "python-slugify",
    "socks": "PySocks",
    "telegram": "python-telegram-bot",
    "umap": "umap-learn",
    "usb": "pyusb",
    "websocket": "websocket-client",
    "wx": "wxPython",
    "yaml": "pyyaml",
    "zmq": "pyzmq",
}

# The names the run tools give these arguments (server/run_tools.py); RunRequest calls the
# image ``profile``.
_REQUIREMENTS_ARGUMENT = "requirements"
_PROFILE_ARGUMENT = "image"
_NO_MODULE = re.compile(r"No module named '(?P<name>[^']+)'")
# PEP 508: what packaging accepts as a project name.
_PROJECT_NAME = re.compile(r"[A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9]", re.IGNORECASE)


@dataclass(frozen=True)
class MissingModule:
    """A module the program could not import, and what would provide it."""

    module: str  # the top-level name: 'sklearn' for "No module named 'sklearn.linear_model'"
    distribution: str  # from DISTRIBUTIONS, else the module's own name
    requirement: str  # what to put in ``requirements``: the distribution


def missing_module(error: ErrorInfo | None) -> MissingModule | None:
    """The module behind a ``ModuleNotFoundError`` in Python's own words, or None: for another
    error, another message (such as "'X' is not a package", where X exists), a relative or
    malformed name, a standard-library module (missing from the image, not from PyPI) or a name no
    distribution could have."""
    if error is None or error.type != "ModuleNotFoundError":
        return None
    match = _NO_MODULE.fullmatch(error.message.strip())
    return None if match is None else module_named(match["name"])


def module_named(name: str) -> MissingModule | None:
    """What would provide the (possibly dotted) module ``name``; None as for ``missing_module``."""
    module = name.split(".", 1)[0]
    if not (module.isascii() and module.isidentifier()) or module in sys.stdlib_module_names:
        return None
    distribution = DISTRIBUTIONS.get(module, module)
    if not _PROJECT_NAME.fullmatch(distribution):
        return None
    return MissingModule(module=module, distribution=distribution, requirement=distribution)


def refusal(missing: MissingModule, settings: PackageSettings) -> str | None:
    """Why this server would refuse ``missing.requirement`` (the policy's own message), or None;
    so a note never suggests a requirement that would only be refused in turn."""
    try:
        check_requested(parse_requirements([missing.requirement]), settings)
    except PackageRefused as exc:
        return str(exc)
    return None


def missing_note(
    missing: MissingModule, profile: str, having: Sequence[str], settings: PackageSettings
) -> str:
    """One note a model can act on: the module, its distribution, and the ways to get it that
    would work here (a requirement unless refused, another of ``having``: the offered profiles
    that pin it, images/profiles.py's ``profiles_pinning``)."""
    renamed = canonicalize_name(missing.distribution) != canonicalize_name(missing.module)
    if profile in having:
        what = f"its distribution {missing.distribution!r}" if renamed else "it"
        return (
            f"The program could not import the module {missing.module!r}, although the {profile!r} "
            f"profile has {what}; adding it will not help: check how the program imports it "
            "(sys.path, or another interpreter in a subprocess)."
        )
    source = f"; it comes from the distribution {missing.distribution!r}" if renamed else ""
    note = (
        f"The program needs the module {missing.module!r}, which is not installed in the "
        f"{profile!r} profile{source}."
    )
    others = [name for name in having if name != profile]
    switch = " or ".join(f"{_PROFILE_ARGUMENT}={name!r}" for name in others)
    has = "which has it" if len(others) == 1 else "each of which has it"
    reason = refusal(missing, settings)
    if reason is not None:
        note += f" This server will not install it: {reason}."
        return note + (f" Run it with {switch} instead, {has}." if others else "")
    note += (
        f" Add {_REQUIREMENTS_ARGUMENT}={[missing.requirement]!r} to the call (installed offline for "
        "this run only)"
    )
    return note + (f", or run it with {switch}, {has}." if others else ".")
