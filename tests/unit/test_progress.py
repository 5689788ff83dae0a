"""The shared progress line: rate and time left; silent when standard error is no terminal."""

from __future__ import annotations

import io

from telemetry.entrypoints.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_says_done_rate_and_time_left() -> None:
    t = [100.0]
    out = _Tty()
    bar = Progress("aggregate", 40, unit="hours", items_unit="readings", out=out,
                   clock=lambda: t[0])
    t[0] += 10
    bar.update(10, 50_000)
    bar.close()
    text = out.getvalue()
    assert text.startswith("\raggregate [######")
    assert " 25%" in text and "10/40 hours" in text
    assert "5,000 readings/s" in text
    assert "0:30 left" in text  # 10 done in 10 s, 30 to go
    assert text.endswith("\n")


def test_it_is_quiet_when_the_output_is_not_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress("replay", 10, out=out)
    bar.update(5, force=True)
    bar.close()
    assert out.getvalue() == ""


def test_without_a_total_it_counts_and_tells_the_elapsed_time() -> None:
    t = [0.0]
    bar = Progress("drain", None, unit="messages", out=_Tty(), clock=lambda: t[0])
    t[0] = 65
    assert bar.line(130) == "drain 130 messages  2 messages/s  1:05 elapsed"


def test_it_redraws_at_most_every_fifth_of_a_second() -> None:
    t = [0.0]
    out = _Tty()
    bar = Progress("x", 100, out=out, clock=lambda: t[0])
    bar.update(1)
    bar.update(2)
    t[0] = 0.3
    bar.update(3)
    assert out.getvalue().count("\r") == 2
