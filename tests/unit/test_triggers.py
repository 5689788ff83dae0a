"""ADR 0001's triggers: a value over its threshold fires, at or under not, none without data."""

from __future__ import annotations

from telemetry.domain.triggers import Measured, Measurements, Thresholds, duplicate_rate, evaluate


def _m(send: float | None, dup: float | None, age: float | None, p99: float | None
       ) -> Measurements:
    return Measurements(Measured(send, "s", "w"), Measured(dup, "s", "w"),
                        Measured(age, "s", "w"), Measured(p99, "s", "w"), batch_max_age_s=5.0)


def _fires(m: Measurements, t: Thresholds | None = None) -> set[str]:
    return {r.name for r in evaluate(m, t or Thresholds()) if r.fires}


def test_each_trigger_fires_above_its_threshold_only() -> None:
    assert _fires(_m(3000, 0.01, 300, 10.0)) == set()  # at the thresholds: not above
    assert _fires(_m(3000.1, 0.0101, 300.1, 10.01)) == {
        "send_rate", "duplicate_rate", "oldest_message_age", "p99_received_to_stored"}
    assert _fires(_m(None, None, None, None)) == set()
    rows = evaluate(_m(None, None, None, None), Thresholds())
    assert {r.value_text for r in rows} == {"no data"}


def test_the_latency_limit_is_the_batch_max_age_plus_the_margin() -> None:
    rows = {r.name: r for r in evaluate(_m(0, 0, 0, 6.0), Thresholds(latency_margin_s=0.5))}
    assert rows["p99_received_to_stored"].threshold == 5.5
    assert rows["p99_received_to_stored"].fires


def test_duplicate_rate() -> None:
    assert duplicate_rate(102, 100) == 0.02
    assert duplicate_rate(100, 100) == 0.0
    assert duplicate_rate(0, 0) is None
