"""Where the tests find the sample real-vehicle data (CAN logs, DBC files, maps, the VSS
catalogue): shipped in the package, under `src/telemetry/samples/`."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src" / "telemetry" / "samples"
CAN = SAMPLES / "can"
MAPS = SAMPLES / "maps"
VSS_CSV = SAMPLES / "vss" / "vss.csv.gz"
