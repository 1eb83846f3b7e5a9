"""The response cache's key and its SQLite store, without Ray."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from providers.cache import CacheStore, cache_key
from providers.models import ChatMessage, ChatRequest

REQUEST = ChatRequest(
    model="gpt-4o-mini", messages=(ChatMessage(role="user", content="hi"),), temperature=0.0
)


def test_the_same_request_has_the_same_key_and_any_changed_parameter_another() -> None:
    key = cache_key("remote-api-openai", REQUEST)

    assert key is not None
    assert key == cache_key("remote-api-openai", REQUEST.model_copy())
    changed = [
        REQUEST.model_copy(update={"max_tokens": 7}),
        REQUEST.model_copy(update={"stop": ("\n",)}),
        REQUEST.model_copy(update={"model": "gpt-4o"}),
        REQUEST.model_copy(update={"temperature": None}),
        REQUEST.model_copy(update={"messages": (ChatMessage(role="user", content="hi!"),)}),
    ]
    keys = {cache_key("remote-api-openai", r) for r in changed}
    assert len(keys) == len(changed)
    assert key not in keys
    assert cache_key("remote-api-anthropic", REQUEST) != key  # another backend


def test_sampled_and_streamed_requests_are_not_cached() -> None:
    openai = "remote-api-openai"
    assert cache_key(openai, REQUEST.model_copy(update={"temperature": 0.7})) is None
    assert cache_key(openai, REQUEST.model_copy(update={"stream": True})) is None
    assert cache_key(openai, REQUEST.model_copy(update={"temperature": None})) is not None


def test_answers_outlive_the_store_that_wrote_them(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "answers.sqlite3"
    store = CacheStore(path, max_bytes=1_000)
    store.put("k", b"answer")
    store.close()

    again = CacheStore(path, max_bytes=1_000)

    assert (again.get("k"), again.get("other"), again.bytes) == (b"answer", None, 6)


def test_past_its_size_the_least_recently_used_answers_go(tmp_path: Path) -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 1
        return now[0]

    store = CacheStore(tmp_path / "c.sqlite3", max_bytes=100, clock=clock)
    for key in ("a", "b"):
        store.put(key, bytes(40))
    assert store.get("a") is not None  # "a" used since "b" was written

    store.put("c", bytes(40))

    assert [k for k in "abc" if store.get(k) is not None] == ["a", "c"]
    assert (store.bytes, store.evictions, store.entries()) == (80, 1, 2)


def test_an_answer_larger_than_the_whole_cache_is_not_kept(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c.sqlite3", max_bytes=10)

    store.put("big", bytes(11))

    assert (store.get("big"), store.bytes) == (None, 0)


def test_a_corrupt_file_is_set_aside_with_a_warning_and_a_new_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"this is not a database, " * 100)

    with caplog.at_level(logging.WARNING, logger="providers.cache"):
        store = CacheStore(path, max_bytes=1_000)

    assert "cannot be read" in caplog.text
    assert (tmp_path / "c.sqlite3.corrupt").read_bytes().startswith(b"this is not")
    store.put("k", b"v")
    assert store.usable
    assert store.get("k") == b"v"


def test_a_store_that_cannot_be_opened_is_no_cache_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")

    with caplog.at_level(logging.WARNING, logger="providers.cache"):
        store = CacheStore(tmp_path / "file" / "c.sqlite3", max_bytes=1_000)  # under a file
        store.put("k", b"v")

    assert "calls go to their backends uncached" in caplog.text
    assert (store.usable, store.get("k"), store.entries()) == (False, None, 0)
