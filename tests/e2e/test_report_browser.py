"""The demo's HTML report in headless Chromium: self-contained, no console message or script
error, every chart it announces drawn, and a screenshot kept as an artifact
($TELEMETRY_TEST_ARTIFACTS, else the test's temporary directory; the path is printed)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0")


def _browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium installed (.ci/run installs Debian's chromium when it can)")


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def _body(dom: str) -> dict[str, str]:
    m = re.search(r"<body([^>]*)>", dom)
    assert m, dom[:2000]
    return {k: html.unescape(v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', m.group(1))}


def test_the_demo_report_renders_in_chromium(tmp_path: Path) -> None:
    pytest.importorskip("can", reason="the CAN extras are not installed")
    browser = _browser()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env["TELEMETRY_DATA_DIR"] = str(tmp_path / "data")
    out = subprocess.run([sys.executable, "-m", "telemetry", "demo", "--replay", "car"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=240,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    m = re.search(r"^HTML report: (.+)$", out.stdout, re.MULTILINE)
    assert m, out.stdout
    report = Path(m.group(1))
    page = report.read_text()
    # self-contained: nothing to fetch
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page

    profile = tmp_path / "profile"
    dumped = _chromium(browser, profile, "--dump-dom", report.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-3000:]
    console = [line for line in dumped.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    body = _body(dumped.stdout)
    assert "data-errors" not in body, body["data-errors"]
    assert body.get("data-rendered") == "ok", body
    charts = json.loads(body["data-charts"])
    assert {"received_to_stored", "ts_to_stored", "throughput", "vehicles", "duplicates",
            "signal:Vehicle.Speed", "signal:Vehicle.Powertrain.CombustionEngine.Speed",
            "track"} <= set(charts)
    for name in charts:  # drawn, not a "no data" placeholder
        figure = re.search(rf'<figure class="chart" data-chart="{re.escape(name)}">(.*?)'
                           r"</figure>", dumped.stdout, re.DOTALL)
        assert figure and re.search(r"<(rect|polyline)", figure.group(1)), name
        assert "no data" not in figure.group(1), name
    assert "<td>p99_received_to_stored</td>" in dumped.stdout

    artifacts = Path(os.environ.get("TELEMETRY_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "demo-report.png"
    taken = _chromium(browser, profile, "--window-size=1500,2600", f"--screenshot={shot}",
                      report.as_uri())
    assert taken.returncode == 0, taken.stderr[-3000:]
    assert shot.stat().st_size > 10_000
    print(f"report screenshot: {shot}")
