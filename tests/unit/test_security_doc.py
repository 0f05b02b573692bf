"""SECURITY.md cites tests; every test and file it cites must exist, so no claim goes unbacked."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
DOC = (ROOT / "SECURITY.md").read_text()


def test_every_cited_file_exists() -> None:
    cited = set(re.findall(r"`((?:tests|src)/[^`:\s]+\.py)", DOC))
    assert cited, "SECURITY.md cites no file"
    assert sorted(path for path in cited if not (ROOT / path).is_file()) == []


def test_every_cited_test_function_exists() -> None:
    sources = "\n".join(path.read_text() for path in (ROOT / "tests").rglob("test_*.py"))
    cited = {name for name in re.findall(r"::(test_\w+)", DOC)} | {
        name for name in re.findall(r"`(test_\w+)`", DOC) if not name.startswith("test_posture")
    }
    assert len(cited) > 20
    assert sorted(name for name in cited if f"def {name}(" not in sources) == []
