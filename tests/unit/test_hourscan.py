"""The compiled whole-hour kernel (`telemetry._hourscan`) against the Python paths: on any raw
lines, its aggregate file is byte for byte the one the Python paths write, or it says None and
leaves the hour to them; on the lines the worker writes it does not say None; and no input,
however broken, crashes it."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from telemetry.adapters.memory import MemoryStorage
from telemetry.domain import aggregation, lake
from telemetry.domain.aggregate import AggregateHours
from telemetry.domain.aggregation import aggregate_raw, aggregate_scans, scan_raw
from tests.strategies import HOUR, finite_floats

try:
    from telemetry import _hourscan
except ImportError:
    if os.environ.get("TELEMETRY_REQUIRE_NATIVE"):
        raise
    pytest.skip("telemetry._hourscan is not built (no C compiler at install time)",
                allow_module_level=True)


def python_path(blobs: list[bytes]) -> tuple[int, bytes] | None:
    """Raw line count and aggregate file of the Python paths alone; None when they refuse the
    lines (not a raw lake file)."""
    storage = MemoryStorage()
    keys = []
    for i, blob in enumerate(blobs):
        key = lake.raw_key(HOUR, f"f{i}", False)
        storage.put(key, blob)
        keys.append(key)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(aggregation, "hour_kernel", None)
        try:
            result = AggregateHours(storage).hour(HOUR, keys)
        except ValueError:
            return None
        except TypeError:
            # A timestamp without an offset (naive) among aware ones fails the Python paths'
            # comparisons: not a lake line either, and the kernel takes only `Z` timestamps.
            return None
    return result.raw_records, storage.get(lake.aggregate_key(HOUR))


def kernel_path(blobs: list[bytes]) -> tuple[int, bytes] | None:
    got = aggregate_raw(HOUR, blobs)
    return None if got is None else (got[0], got[1].encode())


def kernel_parts(blobs: list[bytes], parts: int) -> tuple[int, bytes] | None:
    """The kernel over `parts` parts of the vehicles, added up (as processes split an hour)."""
    scans = [scan_raw(blobs, part, parts) for part in range(parts)]
    done = [s for s in scans if s is not None]
    if len(done) < parts:
        return None
    raw, agg = aggregate_scans(HOUR, done)
    return raw, agg.encode()


# ---------------------------------------------------------------- raw lines, spelled by hand

def _ts(us: int, digits: int, offset: str = "Z") -> str:
    """HOUR + us, with `digits` fractional digits (the instant must fit them), written with
    `offset` (Z, or +HH:MM / -HH:MM: the local time shifted to keep the instant)."""
    t = HOUR + timedelta(microseconds=us)
    frac = f"{t.microsecond:06d}"[:digits]
    if offset != "Z" and offset[3:4] == ":":
        shift = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        t += shift if offset[0] == "+" else -shift
    text = f"{t:%Y-%m-%dT%H:%M:%S}" + (f".{frac}" if digits else "")
    return text + offset


_OFFSETS = ["+01:00", "-05:30", "+00:00", "-00:00", "+23:59", "-23:59"]
_ODD_OFFSETS = ["+24:00", "+0100", "+01", "z", ""]


@st.composite
def timestamps(draw: st.DrawFn, ordinary: bool) -> str:
    digits = draw(st.integers(0, 6))
    us = draw(st.integers(0, 3_599_999_999 // 10 ** (6 - digits))) * 10 ** (6 - digits)
    offset = "Z"
    if draw(st.integers(0, 9)) == 0:
        offset = draw(st.sampled_from(_OFFSETS))
    if not ordinary and draw(st.integers(0, 39)) == 0:
        offset = draw(st.sampled_from(_ODD_OFFSETS))
    return _ts(us, digits, offset)


def _float_token(x: float, style: int) -> str:
    if style == 0 or not math.isfinite(x) or x == 0:
        return repr(x)
    if style == 1:
        return f"{x:e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{x:.17E}"  # every digit and a capital E: the slow path of the float parse


_ORDINARY_TOKENS = ["0", "-0", "1", "1.0", "-1", "-1.0", "0.0", "-0.0", "2", "2.0", "1e5",
                    "1E5", "1.5e-3", "100000.0", "true", "false", '"P"', '"a\\"b"',
                    '"\\u00e9\\n"', '""']
_ODD_TOKENS = [str(2**53 + 1), str(2**63 - 1), str(-(2**63)), str(2**63), str(-(2**63) - 1),
               str(10**30), "1e300", "-1e300", "1.7e308", "-1.7976931348623157e308", "1e400",
               "9.999999999999999e299", "null", "[1]", '{"a":1}', "01", "1.", ".5",
               "1e", "+1", "NaN", '"\\ud800"', '"\\x"', '"\u00e9"']


@st.composite
def value_tokens(draw: st.DrawFn, ordinary: bool) -> str:
    kind = draw(st.integers(0, 9 if ordinary else 30))
    if kind >= 12:  # the odd ones rarely, so that most hours still reach the kernel's end
        kind = draw(st.integers(0, 9))
    if kind <= 3:
        return draw(st.sampled_from(_ORDINARY_TOKENS))
    if kind == 4:
        return str(draw(st.integers(-(2**63), 2**63 - 1)))
    if kind == 5:
        return str(draw(st.integers(-(2**53), 2**53)))
    if kind <= 8:
        return _float_token(draw(finite_floats().filter(lambda x: abs(x) < 1e300)),
                            draw(st.integers(0, 2)))
    if kind == 9:
        return str(draw(st.integers(-1000, 1000)))
    if kind == 10:
        return draw(st.sampled_from(_ODD_TOKENS))
    return _float_token(draw(finite_floats()), draw(st.integers(0, 2)))


_NAMES = ["Vehicle.Speed", "Vehicle.Gear", "Temp", "a_b.c"]
_KEYS = ["reading_id", "vehicle_id", "ts", "received_at", "signals"]
_RECEIVED = [_ts(3_600_000_000 + d, 6) for d in (0, 1, 1_000_000)] + [
    _ts(3_600_000_000, 6, "+02:00")]  # the first instant again, with an offset


@st.composite
def lines(draw: st.DrawFn, ordinary: bool) -> list[str]:
    """Raw lines of one hour: a few vehicles and reading ids so identities repeat, copies
    identical or received earlier, later or at the same instant, names absent or present."""
    count = draw(st.integers(1, 12))
    received = _RECEIVED[:3] if ordinary else _RECEIVED  # (not one instant spelled two ways)
    out: list[str] = []
    made: list[tuple[dict[str, str], str]] = []
    for i in range(count):
        if made and draw(st.integers(0, 3)) == 0:  # another copy of an earlier reading
            prev, text = draw(st.sampled_from(made))
            f = dict(prev)
            change = draw(st.sampled_from(["none", "received_at", "signals"]))
            if change == "none" or (ordinary and change == "signals"):
                out.append(text)
                continue
            if change == "received_at":
                f["received_at"] = f'"{draw(st.sampled_from(received))}"'
                if ordinary and f["received_at"] == prev["received_at"]:
                    out.append(text)
                    continue
            elif not ordinary:  # may tie on received_at with other content
                f["signals"] = _signals(draw, ordinary)
        else:
            rid = (f"r{i}" if ordinary else
                   draw(st.sampled_from(["r0", "r1", "r2", "r3", "r4", "r5", "x:1_2.3",
                                        "r0\\u0031"][: 8 if draw(st.integers(0, 5)) == 0
                                                      else 7])))
            vid = draw(st.sampled_from(["truck-1", "van:2", "v3", "v\\u0034"][
                : 4 if not ordinary and draw(st.integers(0, 5)) == 0 else 3]))
            f = {
                "reading_id": f'"{rid}"',
                "vehicle_id": f'"{vid}"',
                "ts": f'"{draw(timestamps(ordinary))}"',
                "received_at": f'"{draw(st.sampled_from(received))}"',
                "signals": _signals(draw, ordinary),
            }
        order = list(_KEYS)
        # (ordinary lines keep the writer's order: copies received at one instant count once
        # only when their bytes are equal; `test_keys_in_any_order` takes the other orders)
        if not ordinary and draw(st.integers(0, 4)) == 0:
            order = draw(st.permutations(_KEYS))
        text = "{" + ",".join(f'"{k}":{f[k]}' for k in order) + "}"
        made.append((f, text))
        out.append(text)
    return out


def _signals(draw: st.DrawFn, ordinary: bool) -> str:
    names = draw(st.lists(st.sampled_from(_NAMES), unique=True, max_size=4))
    return "{" + ",".join(f'"{n}":{draw(value_tokens(ordinary))}' for n in names) + "}"


def _blobs(draw: st.DrawFn, rows: list[str]) -> list[bytes]:
    cut = draw(st.integers(0, len(rows)))
    parts = [rows[:cut], rows[cut:]]
    return [("\n".join(p) + draw(st.sampled_from(["\n", "", "\n\n"]))).encode()
            for p in parts if p]


@st.composite
def hours(draw: st.DrawFn, ordinary: bool = False) -> list[bytes]:
    return _blobs(draw, draw(lines(ordinary)))


_SETTINGS = settings(max_examples=400, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(hours())
@example([b'{"reading_id":"a","vehicle_id":"v","ts":"2026-11-29T01:00:00Z",'
          b'"received_at":"2026-11-29T02:00:00Z","signals":{"x":1,"x":2.5}}\n'])
def test_the_kernel_writes_what_the_python_paths_write_or_says_none(blobs: list[bytes]) -> None:
    expected = python_path(blobs)
    for got in (kernel_path(blobs), kernel_parts(blobs, 2), kernel_parts(blobs, 3)):
        if expected is None:
            assert got is None
        elif got is not None:
            assert got == expected


@_SETTINGS
@given(hours(ordinary=True))
def test_the_kernel_takes_the_lines_the_worker_writes(blobs: list[bytes]) -> None:
    """Not vacuous: on ordinary lines (ints within int64, floats below 1e300, timestamps with Z
    or an offset, ids without escapes, copies that are identical or received at another
    instant) the kernel answers, and answers the same bytes."""
    got = kernel_path(blobs)
    assert got is not None
    assert got == python_path(blobs)
    assert kernel_parts(blobs, 2) == got


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hours(ordinary=True))
def test_any_contiguous_buffer_is_scanned_as_its_bytes(blobs: list[bytes]) -> None:
    """Aggregation hands the kernel files mapped into memory (`FilesystemStorage.view`)."""
    want = _hourscan.aggregate_hour(list(blobs))
    assert want is not None
    assert _hourscan.aggregate_hour([memoryview(b) for b in blobs]) == want
    assert _hourscan.aggregate_hour([bytearray(b) for b in blobs]) == want
    assert _hourscan.aggregate_hour([memoryview(b) for b in blobs], 1, 2) == (
        _hourscan.aggregate_hour(list(blobs), 1, 2))


def _mutations(data: bytes, rng: random.Random) -> Iterator[bytes]:
    yield data[: rng.randrange(len(data) + 1)]
    for _ in range(4):
        b = bytearray(data)
        i = rng.randrange(len(b))
        b[i] = rng.choice(b'{}[]",:.-+eE0123456789 \n\\tfnu\x00\xff')
        yield bytes(b)
    i = rng.randrange(len(data) + 1)
    yield data[:i] + data[i:][: rng.randrange(3)] + data[i:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hours(), st.randoms(use_true_random=False))
def test_broken_lines_give_none_or_the_python_answer(
    blobs: list[bytes], rng: random.Random
) -> None:
    for broken in _mutations(blobs[0], rng):
        expected = python_path([broken])
        for got in (kernel_path([broken]), kernel_parts([broken], 2)):
            if expected is None:
                assert got is None
            elif got is not None:
                assert got == expected


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=3), st.integers(1, 3))
def test_garbage_never_crashes_the_kernel(blobs: list[bytes], parts: int) -> None:
    for part in range(parts):
        got = _hourscan.aggregate_hour(blobs, part, parts)
        assert got is None or isinstance(got, tuple)


def test_keys_in_any_order() -> None:
    fields = ['"reading_id":"r1"', '"vehicle_id":"v"', '"ts":"2026-11-29T01:00:00Z"',
              '"received_at":"2026-11-29T02:00:00Z"', '"signals":{"x":1.5,"y":2}']
    rng = random.Random(5)
    lines = []
    for i in range(20):
        rng.shuffle(fields)
        lines.append("{" + ",".join(fields).replace('"r1"', f'"r{i}"') + "}")
    blob = "\n".join(lines).encode()
    got = kernel_path([blob])
    assert got is not None
    assert got == python_path([blob])


def test_parts_must_be_a_split() -> None:
    for part, parts in ((0, 0), (2, 2), (-1, 2)):
        with pytest.raises(ValueError, match="range"):
            _hourscan.aggregate_hour([b""], part, parts)


def test_it_refuses_what_is_not_a_list_of_bytes() -> None:
    bad: list[Any] = ["text"]
    with pytest.raises(TypeError):
        _hourscan.aggregate_hour(bad)
    with pytest.raises(TypeError):
        _hourscan.aggregate_hour((b"",))  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # a buffer, but not one piece of memory
        _hourscan.aggregate_hour([b"", memoryview(b"{}\n{}")[::2]])


def test_the_spelling_of_equal_extremes_follows_tie() -> None:
    line = ('{{"reading_id":"r{i}","vehicle_id":"v","ts":"2026-11-29T01:00:00Z",'
            '"received_at":"2026-11-29T02:00:00Z","signals":{{"z":{z},"one":{one}}}}}')
    zs = ["0.0", "-0.0", "0", "-0"]
    ones = ["1", "1.0", "1e0", "1"]
    blob = "\n".join(line.format(i=i, z=z, one=o) for i, (z, o) in enumerate(zip(zs, ones,
                                                                               strict=True)))
    got = _hourscan.aggregate_hour([blob.encode()])
    assert got is not None
    lines_read, vehicles = got
    assert lines_read == 4
    [(vid, readings, _, _, signals)] = vehicles
    stats = {name: (n, lo, hi, total) for name, n, lo, hi, total in signals}
    assert (vid, readings) == ("v", 4)
    z_lo, z_hi = stats["z"][1], stats["z"][2]
    assert type(z_lo) is int and z_lo == 0  # min: an int over a float
    assert type(z_hi) is float and math.copysign(1, z_hi) == 1  # max: 0.0 over -0.0, int
    assert type(stats["one"][1]) is int and type(stats["one"][2]) is float
    assert python_path([blob.encode()]) == kernel_path([blob.encode()])


def test_sums_are_exact_and_correctly_rounded() -> None:
    values = ["1e16", "1.0", "1e-16", "-1e16", "0.1", "0.2", "0.3"]
    blob = "\n".join(
        f'{{"reading_id":"r{i}","vehicle_id":"v","ts":"2026-11-29T01:00:00.5Z",'
        f'"received_at":"2026-11-29T02:00:00Z","signals":{{"x":{v}}}}}'
        for i, v in enumerate(values)
    ).encode()
    got = _hourscan.aggregate_hour([blob])
    assert got is not None
    total = got[1][0][4][0][4]
    assert total == math.fsum(float(v) for v in values)
    assert kernel_path([blob]) == python_path([blob])


def test_the_kernel_runs_in_the_use_case() -> None:
    blob = (b'{"reading_id":"a","vehicle_id":"v","ts":"2026-11-29T01:00:00Z",'
            b'"received_at":"2026-11-29T02:00:00Z","signals":{"x":1}}\n')
    storage = MemoryStorage()
    key = lake.raw_key(HOUR, "f0", False)
    storage.put(key, blob)
    calls: list[int] = []
    kernel = aggregation.hour_kernel
    assert kernel is not None

    def counted(blobs: list[bytes], part: int, parts: int) -> Any:
        calls.append(len(blobs))
        return kernel(blobs, part, parts)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(aggregation, "hour_kernel", counted)
        AggregateHours(storage).hour(HOUR, [key])
    assert calls == [1]
    assert storage.get(lake.aggregate_key(HOUR)) == python_path([blob])[1]  # type: ignore[index]
