"""Slowing down a client that guesses keys, on a fake clock."""

from __future__ import annotations

from serve.keyguesses import KeyGuesses
from tests.unit.conftest import FakeClock


def test_a_client_past_the_limit_waits_until_its_oldest_failure_leaves_the_window() -> None:
    clock = FakeClock()
    guesses = KeyGuesses(limit=3, window=60.0, clock=clock)
    for _ in range(2):
        guesses.failed("10.0.0.1")
        clock.advance(10)
    assert guesses.retry_after("10.0.0.1") is None

    guesses.failed("10.0.0.1")  # the third, 20 s after the first

    assert guesses.retry_after("10.0.0.1") == 40.0
    assert guesses.retry_after("10.0.0.2") is None  # another client
    clock.advance(40)
    assert guesses.retry_after("10.0.0.1") is None


def test_a_right_key_clears_the_clients_failures() -> None:
    clock = FakeClock()
    guesses = KeyGuesses(limit=2, window=60.0, clock=clock)
    guesses.failed("10.0.0.1")
    guesses.succeeded("10.0.0.1")
    guesses.failed("10.0.0.1")

    assert guesses.retry_after("10.0.0.1") is None
