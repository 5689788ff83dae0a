"""Where the tests find the shared real-vehicle data (CAN logs, DBC files, the VSS catalogue):
`$TELEMETRY_SHARED_DATA`, else `../shared/data` beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_data(holding: str) -> Path | None:
    """The first shared data directory that holds `holding` (a relative path), or None."""
    env = os.environ.get("TELEMETRY_SHARED_DATA")
    for base in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (base / holding).exists():
            return base
    return None
