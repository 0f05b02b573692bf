"""How often a client may start runs, and the HTTP guards, with a clock the test controls."""

from __future__ import annotations

import pytest

from agent_sandbox.server.auth import AuthConfigError, is_loopback, require_token_off_loopback
from agent_sandbox.server.start_rate import RateLimited, StartRate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_limit_counts_starts_in_the_last_minute() -> None:
    clock = Clock()
    rate = StartRate(per_minute=3, clock=clock)
    for _ in range(3):
        rate.count("a")
        clock.now += 1
    with pytest.raises(RateLimited, match=r"started 3 runs in the last minute.*try again in 57 s"):
        rate.count("a")
    rate.count("b")
    clock.now += 58
    rate.count("a")


def test_a_refunded_start_does_not_count_against_the_rate() -> None:
    rate = StartRate(per_minute=2, clock=Clock())
    rate.count("a")
    for _ in range(5):  # refused as busy after counting: given back
        rate.count("a")
        rate.refund("a")
    rate.count("a")  # the second start of the minute
    with pytest.raises(RateLimited):
        rate.count("a")


def test_zero_means_no_rate_limit() -> None:
    rate = StartRate(per_minute=0, clock=Clock())
    for _ in range(1000):
        rate.count("a")
    assert rate.tracked_clients == 0


def test_passing_clients_leave_no_state_behind() -> None:
    clock = Clock()
    rate = StartRate(per_minute=1, clock=clock)
    for number in range(1000):
        rate.count(f"client-{number}")
        with pytest.raises(RateLimited):
            rate.count(f"client-{number}")
    clock.now += 61
    rate.count("late")
    assert rate.tracked_clients == 1


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


def test_a_refunded_only_start_leaves_nothing_behind() -> None:
    clock = Clock()
    rate = StartRate(2, clock)
    rate.count("a")
    rate.refund("a")  # refused after all: the client holds no start
    assert rate.tracked_clients == 0
    rate.count("b")  # looking through the clients must not trip on an emptied one
    assert rate.tracked_clients == 1
