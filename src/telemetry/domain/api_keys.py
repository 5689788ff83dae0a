"""API keys: format, hashing, constant-time verification and vehicle permissions.

A key reads `tk_<key id>_<secret>`. The key id is public (it finds the stored record); only a
sha256 of the secret is stored. The secret holds 256 random bits, so a fast hash is enough (a
slow password hash protects low-entropy secrets, which these are not) and keeps auth cheap on
every request. Hashes are compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime

from telemetry.domain.ports.api_keys import ApiKeyLookup, StoredApiKey
from telemetry.domain.readings import VEHICLE_ID_PATTERN

_KEY_RE = re.compile(r"^tk_([a-f0-9]{16})_([A-Za-z0-9_-]{43})$")
_PATTERN_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*\*$")
_VEHICLE_RE = re.compile(VEHICLE_ID_PATTERN)
MAX_KEY_LENGTH = 128


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def format_key(key_id: str, secret: str) -> str:
    return f"tk_{key_id}_{secret}"


def parse_key(text: str) -> tuple[str, str] | None:
    if len(text) > MAX_KEY_LENGTH:
        return None
    m = _KEY_RE.fullmatch(text)  # not match: `$` would let a trailing newline through
    return (m.group(1), m.group(2)) if m else None


def parse_vehicle_patterns(patterns: list[str]) -> tuple[str, ...]:
    """Validate vehicle patterns: `*`, `prefix*` or an exact vehicle id."""
    out: list[str] = []
    for raw in patterns:
        p = raw.strip()
        if p == "*" or _PATTERN_PREFIX_RE.match(p) or _VEHICLE_RE.search(p):
            out.append(p)
        else:
            raise ValueError(f"bad vehicle pattern {p!r}: use an id, prefix* or *")
    if not out:
        raise ValueError("at least one vehicle pattern is needed")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request: the key's name and what it may send for."""

    name: str
    key_id: str
    vehicles: tuple[str, ...]

    def allows(self, vehicle_id: str) -> bool:
        for p in self.vehicles:
            if p in ("*", vehicle_id) or (p.endswith("*") and vehicle_id.startswith(p[:-1])):
                return True
        return False


def new_stored_key(
    key_id: str, secret: str, name: str, vehicles: list[str], now: datetime
) -> StoredApiKey:
    if not name or len(name) > 128:
        raise ValueError("a key name must have 1-128 characters")
    return StoredApiKey(key_id, name, hash_secret(secret), parse_vehicle_patterns(vehicles), now)


class Authenticator:
    """Turn an `X-API-Key` value into a Principal, or None. Never says why."""

    def __init__(self, keys: ApiKeyLookup) -> None:
        self._keys = keys

    def authenticate(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        parsed = parse_key(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        stored = self._keys.find(key_id)
        # Hash and compare even for an unknown id, so timing does not tell ids apart.
        expected = stored.secret_hash if stored else "0" * 64
        ok = hmac.compare_digest(hash_secret(secret), expected)
        if not ok or stored is None or stored.revoked:
            return None
        return Principal(stored.name, stored.key_id, stored.vehicles)
