"""`telemetry keys create|list|revoke` through the CLI's own entry point, on a key file: what
it prints, what it stores, its exit codes, TELEMETRY_KEYS_FILE. (The e2e suite runs the same
commands as processes against a running server.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from telemetry.adapters.api_key_file import FileApiKeyStore
from telemetry.domain.api_keys import Authenticator
from telemetry.entrypoints.cli import main


@pytest.fixture
def keys_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("TELEMETRY_CONFIG_FILE", "TELEMETRY_KEYS_FILE", "TELEMETRY_LOG_FORMAT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TELEMETRY_DATA_DIR", str(tmp_path / "data"))
    path = tmp_path / "mounted" / "keys.json"
    monkeypatch.setenv("TELEMETRY_KEYS_FILE", str(path))
    return path


def test_create_list_revoke(keys_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--name", "gw-1", "--vehicles", "car-*,van-7"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("tk_")
    assert keys_file.exists() and not (keys_file.parent.parent / "data" / "keys.json").exists()
    secret = key.split("_", 2)[2]
    assert secret not in keys_file.read_text()  # only a hash is stored
    principal = Authenticator(FileApiKeyStore(keys_file)).authenticate(key)
    assert principal is not None and principal.vehicles == ("car-*", "van-7")

    assert main(["keys", "list"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["name"], r["vehicles"], r["revoked"]) for r in rows] == [
        ("gw-1", ["car-*", "van-7"], False)]
    assert secret not in out

    assert main(["keys", "revoke", "gw-1"]) == 0
    assert Authenticator(FileApiKeyStore(keys_file)).authenticate(key) is None
    assert main(["keys", "revoke", "gw-1"]) == 1  # nothing left to revoke
    assert main(["keys", "revoke", "no-such-key"]) == 1


@pytest.mark.parametrize("vehicles", ["bad pattern!", "", "*x*"])
def test_create_refuses_bad_patterns(keys_file: Path, vehicles: str) -> None:
    assert main(["keys", "create", "--name", "x", "--vehicles", vehicles]) == 2
    assert not keys_file.exists() or "x" not in keys_file.read_text()
