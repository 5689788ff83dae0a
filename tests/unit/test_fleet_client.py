"""What simulate and replay share as clients: the same checks of a start instant and a
vehicle_id, the same errors kept, the same summary line and exit status."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import pytest

from telemetry.adapters.ingest_client import ClientSummary
from telemetry.entrypoints import simulate
from telemetry.entrypoints.fleet_client import (
    ERRORS_KEPT,
    exit_status,
    keep_error,
    summary_line,
    vehicle_id_ok,
)


def _refusal(add_parser: Callable[[Any], None], argv: list[str],
             capsys: pytest.CaptureFixture[str]) -> str:
    ap = argparse.ArgumentParser(prog="telemetry")
    add_parser(ap.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        ap.parse_args(argv)
    return capsys.readouterr().err.strip().splitlines()[-1].split(": ", 3)[-1]


@pytest.mark.parametrize(("value", "why"), [
    ("2026-11-29T01:00:00", "the timestamp needs an offset (Z, +02:00)"),
    ("1999-12-31T23:00:00Z", "readings must not be before 2000-01-01"),
    ("yesterday", "expected "),
])
def test_simulate_and_replay_refuse_a_start_alike(
    value: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("can", reason="the CAN extras are not installed")
    from telemetry.entrypoints import replay

    sim = _refusal(simulate.add_parser, ["simulate", "--start", value], capsys)
    rep = _refusal(replay.add_parser, ["replay", "--dbc", "d", "--log", "l", "--vehicle-id",
                                       "v", "--time", value], capsys)
    assert sim.startswith(f"{value!r}: {why}") and rep.startswith(f"{value!r}: {why}")
    if value == "yesterday":  # replay names its other choices
        assert "original, now or" in rep and "original" not in sim


@pytest.mark.parametrize(("vehicle_id", "ok"), [
    ("car-1", True), ("a" * 64, True), ("a" * 65, False), ("", False), ("-car", False),
    ("car-1\n", False), ("car 1", False),
])
def test_a_vehicle_id_is_checked_by_the_contracts_rule(vehicle_id: str, ok: bool) -> None:
    assert vehicle_id_ok(vehicle_id) is ok


def test_the_first_errors_are_kept() -> None:
    errors: list[str] = []
    for i in range(ERRORS_KEPT + 3):
        keep_error(errors, RuntimeError(f"e{i}"))
    assert errors == [f"e{i}" for i in range(ERRORS_KEPT)]


def test_summary_line_and_exit_status() -> None:
    s = ClientSummary()
    s.sent, s.accepted, s.retries = 10, 10, 1
    assert summary_line(s, 2.0, "resent=3 ") == (
        "sent=10 accepted=10 rejected=0 retries=1 resent=3 elapsed_s=2.00 rate=5/s")
    assert exit_status(s, stopped=None, interrupted=False) == 0
    assert exit_status(s, stopped="stopped after a request failed: 401", interrupted=False) == 1
    assert exit_status(s, stopped=None, interrupted=True) == 130
    s.rejected = 1
    assert exit_status(s, stopped=None, interrupted=False) == 1
