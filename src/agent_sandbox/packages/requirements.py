"""What a caller may ask for: named packages with versions, extras and markers; never URLs,
paths or pip options."""

from __future__ import annotations

from packaging.requirements import InvalidRequirement, Requirement

from agent_sandbox.errors import PackageRefused

REQUIREMENTS_FILE = "requirements.txt"
_MAX_SPEC_CHARS = 200
# pip reads a name like these as a local file to build, not as a project on the index.
_ARCHIVE_SUFFIXES = (
    ".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tlz", ".tar.lz",
    ".tar.lzma",
)  # fmt: skip


def parse_requirements(specs: list[str]) -> list[Requirement]:
    """Parse requirement specifiers such as ``"six"`` or ``"pandas>=2,<3"``; duplicates dropped."""
    parsed: dict[str, Requirement] = {}
    for spec in specs:
        requirement = _parse(spec.strip(), spec)
        parsed.setdefault(str(requirement), requirement)
    return list(parsed.values())


def requirements_file(text: str) -> list[str]:
    """The specifiers in a ``requirements.txt``: comments and blank lines skipped; option lines
    (``-r``, ``-e``, ``--index-url``...) refused, as the host chooses where packages come from."""
    specs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise PackageRefused(
                f"{REQUIREMENTS_FILE} line {number} ({line!r}) is a pip option; only package "
                "requirements such as 'six' or 'pandas>=2' are honoured there"
            )
        specs.append(line)
    return specs


def _parse(spec: str, original: str) -> Requirement:
    if not spec or len(spec) > _MAX_SPEC_CHARS:
        raise PackageRefused(
            f"requirement {original!r} is empty or longer than {_MAX_SPEC_CHARS} characters; "
            "write it like 'six' or 'pandas>=2,<3'"
        )
    if spec.startswith("-"):
        raise PackageRefused(f"requirement {original!r} is a pip option; name a package instead")
    try:
        requirement = Requirement(spec)
    except InvalidRequirement as exc:
        raise PackageRefused(
            f"requirement {original!r} is not a valid requirement ({exc}); write it like 'six' or "
            "'pandas>=2,<3'"
        ) from None
    if requirement.url or requirement.name.lower().endswith(_ARCHIVE_SUFFIXES):
        raise PackageRefused(
            f"requirement {original!r} points at a URL or file; only packages from the host's "
            "package index can be installed: name the package and a version instead"
        )
    return requirement
