"""Per-client fair shares, with a clock the test controls."""

from __future__ import annotations

import pytest

from agent_sandbox.server.auth import AuthConfigError, is_loopback, require_token_off_loopback
from agent_sandbox.server.client_limits import ClientLimitError, ClientLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_may_not_exceed_its_concurrent_runs_but_others_may_run() -> None:
    limits = ClientLimits(max_concurrent=2, per_minute=0)
    with limits.admit("a"), limits.admit("a"):
        with pytest.raises(ClientLimitError, match="already has 2 runs in progress"), limits.admit("a"):
            pass
        with limits.admit("b"):
            pass
    with limits.admit("a"):  # places are given back
        pass


def test_the_rate_limit_counts_starts_in_the_last_minute() -> None:
    clock = Clock()
    limits = ClientLimits(max_concurrent=10, per_minute=3, clock=clock)
    for _ in range(3):
        with limits.admit("a"):
            clock.now += 1
    with (
        pytest.raises(ClientLimitError, match=r"started 3 runs in the last minute.*try again in 57 s"),
        limits.admit("a"),
    ):
        pass
    with limits.admit("b"):
        pass
    clock.now += 58
    with limits.admit("a"):
        pass


def test_a_refused_run_does_not_count_against_the_rate() -> None:
    clock = Clock()
    limits = ClientLimits(max_concurrent=1, per_minute=2, clock=clock)
    with limits.admit("a"):
        for _ in range(5):
            with pytest.raises(ClientLimitError), limits.admit("a"):
                pass
    with limits.admit("a"):  # the second start of the minute
        pass


def test_passing_clients_leave_no_state_behind() -> None:
    clock = Clock()
    limits = ClientLimits(max_concurrent=1, per_minute=5, clock=clock)
    for number in range(1000):
        with limits.admit(f"client-{number}"):
            pass
        with (
            pytest.raises(ClientLimitError),
            limits.admit(f"client-{number}"),
            limits.admit(f"client-{number}"),
        ):
            pass
    clock.now += 61
    with limits.admit("late"):
        pass
    assert limits.tracked_clients == 1


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("127.1.2.3", False), ("0.0.0.0", False),
     ("192.168.1.5", False), ("::", False), ("sandbox.example.com", False)],
)  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_token_is_required_off_loopback_only() -> None:
    require_token_off_loopback("127.0.0.1", "")
    require_token_off_loopback("0.0.0.0", "a-long-enough-token")
    with pytest.raises(AuthConfigError, match=r"refusing to listen on 0\.0\.0\.0 without a token"):
        require_token_off_loopback("0.0.0.0", "")


@pytest.mark.parametrize("token", ["x", " " * 20, "short-token", " padded-token-value "])
def test_a_weak_token_is_refused(token: str) -> None:
    with pytest.raises(AuthConfigError, match="at least 16 characters"):
        require_token_off_loopback("0.0.0.0", token)
