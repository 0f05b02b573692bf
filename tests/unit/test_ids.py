"""Ids a command line can take as they are."""

from __future__ import annotations

import re

import pytest

from agent_sandbox import ids


def test_an_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = iter(["-startsLikeAnOption0000", "aFineIdOfTwentyTwoChar"])
    monkeypatch.setattr(ids.secrets, "token_urlsafe", lambda size: next(drawn))
    assert ids.new_id() == "aFineIdOfTwentyTwoChar"


def test_ids_are_22_url_safe_characters() -> None:
    made = {ids.new_id() for _ in range(2000)}
    assert len(made) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", made_id) for made_id in made)
