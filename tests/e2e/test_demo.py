"""`telemetry demo` as a user runs it: the simulated fleet, and a replayed real CAN log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from telemetry.entrypoints.cli import main

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env["TELEMETRY_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run([sys.executable, "-m", "telemetry", "demo", *args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
                          preexec_fn=lambda: os.umask(0))


def _number(report: str, label: str) -> int:
    m = re.search(rf"^{label}\s+([\d,]+)", report, re.MULTILINE)
    assert m, f"{label!r} not in the report:\n{report}"
    return int(m.group(1).replace(",", ""))


def test_demo_with_the_simulated_fleet_passes(tmp_path: Path) -> None:
    out = _demo(tmp_path, "--duration", "3", "--vehicles", "5", "--rate", "5")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "-> PASS" in out.stdout
    # 5 vehicles x 5 Hz x 3 s, every one stored and counted once
    assert _number(out.stdout, "stored in the lake") == 75
    # Everything the demo leaves (its server's log and the HTML report included) is the user's
    # alone, though it ran with umask 0.
    data = tmp_path / "data"
    assert (data / "report.html").is_file() and (data / "serve.log").is_file()
    wide = [f"{oct(p.stat().st_mode & 0o777)} {p}" for p in [data, *data.rglob("*")]
            if p.stat().st_mode & 0o077]
    assert not wide, wide


def test_demo_replaying_the_truck_log_passes(tmp_path: Path) -> None:
    pytest.importorskip("can", reason="the CAN extras are not installed")
    out = _demo(tmp_path, "--replay", "truck")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "-> PASS" in out.stdout
    assert "frames=57849 decoded=14118" in out.stdout
    assert _number(out.stdout, "accepted \\(202\\)") == 14499  # with 508 DM1 DTC readings
    assert _number(out.stdout, "stored in the lake") == 14499
    # One vehicle, standing. The table shows the first hour only: a replay that crosses an hour
    # boundary (it ends about now) shows part of the readings, so the count is not checked here.
    table = out.stdout.split("per-vehicle counts for hour", 1)[1].split("self-check", 1)[0]
    rows = re.findall(r"^  (demo-\S+)\s+([\d]+)\s+(\S+) ", table, re.MULTILINE)
    assert [(v.endswith("-truck"), speed) for v, _, speed in rows] == [(True, "0.0")], table


def test_demo_replaying_the_kona_mf4_reports_its_state_of_charge(tmp_path: Path) -> None:
    pytest.importorskip("asammdf", reason="the CAN extras are not installed")
    out = _demo(tmp_path, "--replay", "kona")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "-> PASS" in out.stdout
    assert "reassembled=270" in out.stdout
    assert _number(out.stdout, "stored in the lake") == 270
    table = out.stdout.split("per-vehicle counts for hour", 1)[1].split("self-check", 1)[0]
    assert "mean SoC %" in table
    rows = re.findall(r"^  (demo-\S+)\s+(\d+)\s+(\S+)\s+(\S+) ", table, re.MULTILINE)
    assert [(v.endswith("-kona"), soc) for v, _, _, soc in rows] == [(True, "50.0")], table


def test_demo_replay_refuses_missing_files_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("can", reason="the CAN extras are not installed")
    monkeypatch.setenv("TELEMETRY_DATA_DIR", str(tmp_path / "data"))
    argv = ["demo", "--log", str(tmp_path / "nope.log"), "--dbc", str(tmp_path / "x.dbc")]
    assert main(argv) == 2  # in this process: it must stop before starting one
    assert "x.dbc: no such file" in capsys.readouterr().err
    assert main(["demo", "--log", str(tmp_path / "nope.log")]) == 2
    assert "--log needs --dbc" in capsys.readouterr().err
    # A log without a single CAN frame (here an empty candump file) is refused up front too.
    (tmp_path / "x.dbc").write_text('VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_:\n')
    (tmp_path / "empty.log").write_text("")
    assert main(["demo", "--log", str(tmp_path / "empty.log"), "--dbc",
                 str(tmp_path / "x.dbc")]) == 2
    assert "holds no CAN frame" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
