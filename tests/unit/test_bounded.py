"""The bounded mapping: what it forgets first, and what keeps a key."""

from __future__ import annotations

import pytest

from actors.bounded import Bounded


def test_past_its_size_it_forgets_the_least_recently_used_key() -> None:
    memory: Bounded[str, int] = Bounded(2)
    memory["a"], memory["b"] = 1, 2
    assert memory.get("a") == 1  # read: now the most recently used

    memory["c"] = 3

    assert list(memory) == ["a", "c"]
    assert "b" not in memory


def test_asking_whether_it_holds_a_key_does_not_keep_the_key() -> None:
    memory: Bounded[str, None] = Bounded(2)
    memory.add("a")
    memory.add("b")
    assert "a" in memory

    memory.add("c")

    assert list(memory) == ["b", "c"]


def test_a_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 key, not 0"):
        Bounded(0)
