"""The queue page's session cookie: it stands for a key without carrying it."""

from __future__ import annotations

from pydantic import SecretStr

from serve.page import COOKIE, session_cookie, session_token

KEYS = (SecretStr("sk-one-0123"), SecretStr("sk-two-4567"))


def test_the_token_names_its_key_without_showing_it() -> None:
    tokens = [session_token(key) for key in KEYS]

    assert tokens[0] != tokens[1]
    assert all(key.get_secret_value() not in token for key, token in zip(KEYS, tokens, strict=True))
    assert session_token(SecretStr("sk-one-0123")) == tokens[0]  # the same on every replica


def test_the_cookie_is_kept_from_scripts_and_other_sites() -> None:
    plain = session_cookie("t", secure=False)
    assert plain.startswith(f"{COOKIE}=t; Path=/;")
    assert "HttpOnly" in plain
    assert "SameSite=Strict" in plain
    assert "Secure" not in plain
    assert session_cookie("t", secure=True).endswith("; Secure")
