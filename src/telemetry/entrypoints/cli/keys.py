"""`telemetry keys create|list|revoke`: the API keys (only their hashes are stored)."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from datetime import UTC, datetime
from typing import Any

from telemetry.domain.api_keys import format_key, new_stored_key
from telemetry.domain.ports.api_keys import ApiKeyAdmin
from telemetry.entrypoints.cli.common import Invocation


def add_parser(sub: Any) -> None:
    kp = sub.add_parser("keys", help="create, list and revoke API keys",
                        description="Manage API keys. Only hashes are stored.")
    ksub = kp.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kc = ksub.add_parser("create", help="create a key; prints it once, as the last line",
                         description="Create a key. It is printed once, as the last line.")
    kc.add_argument("--name", required=True)
    kc.add_argument("--vehicles", required=True,
                    help="comma-separated patterns: exact ids, prefix*, or *")
    kc.set_defaults(run=run_create)
    kl = ksub.add_parser("list", help="list keys (never the keys themselves)",
                         description="List keys: id, name, vehicles, revoked.")
    kl.set_defaults(run=run_list)
    kr = ksub.add_parser("revoke", help="revoke a key by name or id",
                         description="Revoke every key with this name or id.")
    kr.add_argument("key", help="key name or id")
    kr.set_defaults(run=run_revoke)


def _store(inv: Invocation) -> ApiKeyAdmin:
    store: ApiKeyAdmin = inv.container().api_keys()
    return store


def run_create(args: argparse.Namespace, inv: Invocation) -> int:
    store = _store(inv)
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    try:
        stored = new_stored_key(
            key_id, secret, args.name, args.vehicles.split(","), datetime.now(UTC)
        )
    except ValueError as exc:
        print(f"telemetry keys create: {exc}", file=sys.stderr)
        return 2
    store.add(stored)
    print(f"created key {args.name!r} (id {key_id}) for {','.join(stored.vehicles)}")
    print("store it now: it is shown once and never again")
    print(format_key(key_id, secret))
    return 0


def run_list(args: argparse.Namespace, inv: Invocation) -> int:
    for k in _store(inv).all():
        row = {"id": k.key_id, "name": k.name, "vehicles": list(k.vehicles),
               "created_at": k.created_at.isoformat(), "revoked": k.revoked}
        print(json.dumps(row))
    return 0


def run_revoke(args: argparse.Namespace, inv: Invocation) -> int:
    n = _store(inv).revoke(args.key)
    print(f"revoked {n} key(s)")
    return 0 if n else 1
