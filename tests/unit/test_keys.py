"""API keys: format, verification and vehicle permissions (contract section 3)."""

from __future__ import annotations

import hashlib
import string
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.adapters.memory import MemoryApiKeyStore
from telemetry.domain.api_keys import (
    MAX_KEY_LENGTH,
    Authenticator,
    Principal,
    format_key,
    hash_secret,
    new_stored_key,
    parse_key,
    parse_vehicle_patterns,
)
from tests.strategies import vehicle_ids

NOW = datetime(2026, 11, 29, 1, tzinfo=UTC)
KEY_ID = "0123456789abcdef"
SECRET = "S" * 20 + "-_" + "a1" * 10 + "Z"  # 43 url-safe chars, like token_urlsafe(32)
KEY = format_key(KEY_ID, SECRET)

key_ids = st.text("0123456789abcdef", min_size=16, max_size=16)
secrets_ = st.text(string.ascii_letters + string.digits + "-_", min_size=43, max_size=43)


def store_with(*keys: tuple[str, str, list[str]]) -> MemoryApiKeyStore:
    store = MemoryApiKeyStore()
    for key_id, secret, vehicles in keys:
        store.add(new_stored_key(key_id, secret, f"name-{key_id}", vehicles, NOW))
    return store


# ---------------------------------------------------------------- format


@settings(max_examples=100, deadline=None)
@given(key_ids, secrets_)
def test_format_and_parse_round_trip(key_id: str, secret: str) -> None:
    key = format_key(key_id, secret)
    assert key.startswith("tk_")
    assert len(key) <= MAX_KEY_LENGTH
    assert parse_key(key) == (key_id, secret)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tk_",
        KEY[:-1],  # secret one char short
        KEY + "A",  # one char long
        KEY + "\n",  # a trailing newline is not part of any key
        " " + KEY,
        KEY + " ",
        "TK_" + KEY[3:],
        "tk_0123456789ABCDEF_" + SECRET,  # the id is lower-case hex
        "tk_0123456789abcdeg_" + SECRET,
        "tk_0123456789abcde_" + SECRET + "x",  # 15-char id
        f"tk_{KEY_ID}_" + SECRET[:-1] + "=",  # padding is not url-safe base64 here
        f"tk_{KEY_ID}-{SECRET}",
        KEY + "A" * 200,  # too long
        "x" * 10_000,
    ],
    ids=repr,
)
def test_malformed_keys_do_not_parse(text: str) -> None:
    assert parse_key(text) is None


def test_only_a_hash_of_the_secret_is_stored() -> None:
    stored = new_stored_key(KEY_ID, SECRET, "truck fleet", ["truck-*"], NOW)
    assert stored.secret_hash == hashlib.sha256(SECRET.encode()).hexdigest()
    assert stored.secret_hash == hash_secret(SECRET)
    assert SECRET not in repr(stored)
    assert stored.vehicles == ("truck-*",)
    assert not stored.revoked


@pytest.mark.parametrize("name", ["", "n" * 129])
def test_a_key_name_must_have_1_to_128_chars(name: str) -> None:
    with pytest.raises(ValueError):
        new_stored_key(KEY_ID, SECRET, name, ["*"], NOW)
    assert new_stored_key(KEY_ID, SECRET, "n" * 128, ["*"], NOW).name == "n" * 128


# ---------------------------------------------------------------- authentication


def test_the_right_key_authenticates() -> None:
    auth = Authenticator(store_with((KEY_ID, SECRET, ["truck-*", "van-7"])))
    principal = auth.authenticate(KEY)
    assert principal == Principal(f"name-{KEY_ID}", KEY_ID, ("truck-*", "van-7"))


def test_wrong_unknown_revoked_and_malformed_keys_are_refused() -> None:
    other_id = "fedcba9876543210"
    store = store_with((KEY_ID, SECRET, ["*"]), (other_id, "O" * 43, ["*"]))
    auth = Authenticator(store)
    assert auth.authenticate(KEY) is not None
    assert auth.authenticate(format_key(KEY_ID, "X" + SECRET[1:])) is None  # wrong secret
    assert auth.authenticate(format_key(other_id, SECRET)) is None  # another key's secret
    assert auth.authenticate(format_key("aaaaaaaaaaaaaaaa", SECRET)) is None  # unknown id
    assert auth.authenticate(None) is None
    assert auth.authenticate("") is None
    assert auth.authenticate("Bearer " + KEY) is None
    assert auth.authenticate(KEY + "\n") is None
    assert auth.authenticate(KEY + "A" * MAX_KEY_LENGTH) is None  # too long
    assert store.revoke(f"name-{KEY_ID}") == 1
    assert auth.authenticate(KEY) is None  # revoked
    assert auth.authenticate(format_key(other_id, "O" * 43)) is not None  # the other still works


def test_a_revoked_flag_alone_refuses_the_key() -> None:
    stored = new_stored_key(KEY_ID, SECRET, "n", ["*"], NOW)
    store = MemoryApiKeyStore([replace(stored, revoked=True)])
    assert Authenticator(store).authenticate(KEY) is None


@settings(max_examples=50, deadline=None)
@given(key_ids, secrets_, secrets_)
def test_only_the_exact_secret_authenticates(key_id: str, secret: str, guess: str) -> None:
    auth = Authenticator(store_with((key_id, secret, ["*"])))
    assert auth.authenticate(format_key(key_id, secret)) is not None
    assert (auth.authenticate(format_key(key_id, guess)) is not None) == (guess == secret)


# ---------------------------------------------------------------- permissions


def principal(*patterns: str) -> Principal:
    return Principal("p", KEY_ID, parse_vehicle_patterns(list(patterns)))


def test_exact_pattern_allows_only_that_vehicle() -> None:
    p = principal("truck-1")
    assert p.allows("truck-1")
    assert not p.allows("truck-10")
    assert not p.allows("truck-")
    assert not p.allows("TRUCK-1")


def test_prefix_pattern_allows_the_prefix() -> None:
    p = principal("truck-*")
    assert p.allows("truck-1")
    assert p.allows("truck-")
    assert p.allows("truck-a:b.c")
    assert not p.allows("truck")
    assert not p.allows("van-1")
    assert not p.allows("xtruck-1")


def test_star_allows_all_and_patterns_add_up() -> None:
    assert principal("*").allows("anything-at-all")
    p = principal("truck-*", "van-7")
    assert p.allows("truck-9")
    assert p.allows("van-7")
    assert not p.allows("van-8")


@settings(max_examples=100, deadline=None)
@given(vehicle_ids(), vehicle_ids(max_size=10))
def test_prefix_star_is_startswith(vehicle_id: str, prefix: str) -> None:
    assert principal(prefix + "*").allows(vehicle_id) == vehicle_id.startswith(prefix)
    assert principal(vehicle_id).allows(vehicle_id)
    assert principal("*").allows(vehicle_id)


@pytest.mark.parametrize(
    "patterns",
    [
        [],
        [""],
        ["   "],
        ["**"],
        ["*truck"],
        ["tr*ck"],
        ["truck-*-*"],
        ["truck 1"],
        ["truck/1"],
        ["-truck"],
        ["ok", "bad pattern"],
    ],
    ids=repr,
)
def test_check_patterns_rejects_bad_patterns(patterns: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_vehicle_patterns(patterns)


def test_check_patterns_accepts_ids_prefixes_and_star() -> None:
    assert parse_vehicle_patterns(["*", "truck-*", " van-7\n", "a:b.c_d"]) == (  # stripped
        "*",
        "truck-*",
        "van-7",
        "a:b.c_d",
    )
