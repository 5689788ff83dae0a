"""The repository alone is enough: the tracked tree, copied into an empty folder with nothing
beside it, replays the sample logs from its own source."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("cantools", reason="the can extra is not installed")


def _tree() -> list[str]:
    """Tracked files and new ones not ignored: what a clone of this work would hold."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f and (REPO / f).is_file()]


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    top = tmp_path_factory.mktemp("alone")
    copy = top / "fleet-telemetry"
    for f in _tree():
        (copy / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, copy / f)
    assert [p.name for p in top.iterdir()] == ["fleet-telemetry"]  # nothing beside it
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TELEMETRY_", "AWS_", "PYTHON"))}
    env.update(PYTHONPATH=str(copy / "src"), HOME=str(top / "fleet-telemetry"),
               TELEMETRY_DATA_DIR=str(copy / "data"))
    where = subprocess.run([sys.executable, "-c", "import telemetry; print(telemetry.__file__)"],
                           env=env, cwd=copy, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(copy)  # the copy's code, not this tree's
    return copy, env


def _telemetry(copy: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "telemetry", *argv], env=env, cwd=copy,
                          capture_output=True, text=True, timeout=300, check=False)


def test_the_demo_replays_the_truck_log(alone: tuple[Path, dict[str, str]]) -> None:
    copy, env = alone
    out = _telemetry(copy, env, "demo", "--replay", "truck")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "-> PASS" in out.stdout
    assert "frames=57849 decoded=" in out.stdout


def test_replay_decodes_the_car_log(alone: tuple[Path, dict[str, str]]) -> None:
    copy, env = alone
    samples = "src/telemetry/samples"
    out = _telemetry(copy, env, "replay", "--dry-run", "--limit", "500",
                     "--dbc", f"{samples}/can/canmod-gps.dbc",
                     "--log", f"{samples}/can/css-car-gnss-obd2.candump.log.gz",
                     "--map", f"{samples}/maps/css-car-gnss-obd2.yaml", "--vehicle-id", "car-1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 500
    assert "Vehicle.Speed" in out.stdout
