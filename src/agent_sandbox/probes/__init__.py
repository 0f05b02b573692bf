"""Programs that agent-sandbox runs inside its own sandbox to check it (tests and `doctor`)."""

from pathlib import Path

POSTURE_PROBE = (Path(__file__).parent / "posture.py").read_text()
