"""The ApiKeyStore port's contract, against every adapter in KEYSTORE_ADAPTERS."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from telemetry.domain.api_keys import hash_secret
from telemetry.domain.ports.api_keys import StoredApiKey
from tests.support.roles import API_KEY_ROLES, ApiKeyStore

T0 = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)


def key(
    key_id: str, name: str, minutes: int = 0, vehicles: tuple[str, ...] = ("*",)
) -> StoredApiKey:
    return StoredApiKey(
        key_id, name, hash_secret(f"secret-{key_id}"), vehicles, T0 + timedelta(minutes=minutes)
    )


def test_the_adapter_implements_the_port(key_store: ApiKeyStore) -> None:
    assert isinstance(key_store, ApiKeyStore)
    for role in API_KEY_ROLES:
        assert isinstance(key_store, role), role.__name__


def test_an_empty_store(key_store: ApiKeyStore) -> None:
    assert key_store.all() == []
    assert key_store.find("0123456789abcdef") is None
    assert key_store.revoke("anything") == 0


def test_add_then_find_returns_the_key_as_added(key_store: ApiKeyStore) -> None:
    k = key("0123456789abcdef", "truck-gw", vehicles=("truck-*", "van-7"))
    key_store.add(k)
    found = key_store.find(k.key_id)
    assert found == k
    assert found is not None and found.created_at.utcoffset() == timedelta(0)
    assert key_store.find("fedcba9876543210") is None


def test_a_time_with_another_offset_survives(key_store: ApiKeyStore) -> None:
    plus_two = timezone(timedelta(hours=2))
    k = replace(key("0123456789abcdef", "n"),
                created_at=datetime(2026, 11, 29, 3, 0, 0, 123456, tzinfo=plus_two))
    key_store.add(k)
    assert key_store.find(k.key_id) == k


def test_all_lists_every_key_oldest_first(key_store: ApiKeyStore) -> None:
    keys = [key("000000000000000c", "c", 2), key("000000000000000a", "a", 0),
            key("000000000000000b", "b", 1)]
    for k in keys:
        key_store.add(k)
    assert [k.name for k in key_store.all()] == ["a", "b", "c"]


def test_adding_an_existing_id_is_refused(key_store: ApiKeyStore) -> None:
    k = key("0123456789abcdef", "first")
    key_store.add(k)
    with pytest.raises(ValueError):
        key_store.add(replace(k, name="second"))
    assert key_store.all() == [k]


def test_revoke_by_name_revokes_every_key_of_that_name(key_store: ApiKeyStore) -> None:
    a1, a2, b = key("00000000000000a1", "a", 0), key("00000000000000a2", "a", 1), key(
        "00000000000000b0", "b", 2
    )
    for k in (a1, a2, b):
        key_store.add(k)
    assert key_store.revoke("a") == 2
    assert key_store.revoke("a") == 0  # already revoked
    revoked = {k.key_id: k.revoked for k in key_store.all()}
    assert revoked == {a1.key_id: True, a2.key_id: True, b.key_id: False}
    found = key_store.find(a1.key_id)
    assert found is not None and found.revoked
    assert found == replace(a1, revoked=True)  # nothing else changed


def test_revoke_by_id_revokes_that_key_only(key_store: ApiKeyStore) -> None:
    a1, a2 = key("00000000000000a1", "a", 0), key("00000000000000a2", "a", 1)
    key_store.add(a1)
    key_store.add(a2)
    assert key_store.revoke(a2.key_id) == 1
    assert [k.revoked for k in key_store.all()] == [False, True]
    assert key_store.revoke("unknown") == 0
