"""Where the tests find the sample real-vehicle data (CAN logs, DBC files, maps, the VSS
catalogue): shipped in the package, under `src/telemetry/samples/`."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src" / "telemetry" / "samples"
MAPS = SAMPLES / "maps"


def shared_data(holding: str) -> Path | None:
    """The samples directory when it holds `holding` (a relative path), else None."""
    return SAMPLES if (SAMPLES / holding).exists() else None
