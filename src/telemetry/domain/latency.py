"""A mergeable latency distribution with p50/p95/p99/max.

Log-spaced buckets 1% wide (like HDR histograms): a percentile is reported as its bucket's upper
edge, so it is at most 1% above the true value; max is exact. Merging adds bucket counts, so
partial distributions from many files or workers combine in any order to the same result.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

_GROWTH = 1.01
_LOG_GROWTH = math.log(_GROWTH)
_FLOOR_MS = 1.0  # everything under 1 ms shares bucket 0


def _bucket(ms: float) -> int:
    if ms < _FLOOR_MS:
        return 0
    return 1 + int(math.log(ms / _FLOOR_MS) / _LOG_GROWTH)


def _upper_ms(bucket: int) -> float:
    return _FLOOR_MS * _GROWTH ** bucket


@dataclass(slots=True)
class LatencyDistribution:
    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    max_ms: float = 0.0
    negative: int = 0  # values below zero (vehicle clock ahead), recorded as 0
    # the sum of the values as recorded (a Prometheus histogram's _sum); rounding differs by
    # merge order, so it takes no part in equality
    total_ms: float = field(default=0.0, compare=False)

    def add(self, ms: float, weight: int = 1) -> None:
        if weight <= 0:
            return
        if ms < 0:
            self.negative += weight
            ms = 0.0
        b = _bucket(ms)
        self.counts[b] = self.counts.get(b, 0) + weight
        self.count += weight
        self.total_ms += ms * weight
        self.max_ms = max(self.max_ms, ms)

    def add_many(self, values_ms: Iterable[float]) -> None:
        # The worker adds one value per reading, so the
        # per-value log() is replaced by one C sort and a walk over the buckets the values span:
        # _bucket is monotonic, so a bucket's values are a contiguous run of the sorted list,
        # found by bisecting on its float edge and then settled with _bucket itself, so each
        # value lands exactly where `add` would put it.
        vals = sorted(values_ms)
        n = len(vals)
        if n == 0:
            return
        i = bisect_left(vals, 0)
        if i:
            self.negative += i
            self.counts[0] = self.counts.get(0, 0) + i
            self.max_ms = max(self.max_ms, 0.0)
        counts = self.counts
        while i < n:
            b = _bucket(vals[i])
            j = bisect_left(vals, _upper_ms(b), i + 1)
            while j > i + 1 and _bucket(vals[j - 1]) != b:
                j -= 1
            while j < n and _bucket(vals[j]) == b:
                j += 1
            counts[b] = counts.get(b, 0) + (j - i)
            i = j
        self.count += n
        self.total_ms += math.fsum(vals[bisect_left(vals, 0):])
        self.max_ms = max(self.max_ms, vals[-1])

    def merge(self, other: LatencyDistribution) -> LatencyDistribution:
        out = LatencyDistribution(dict(self.counts), self.count, self.max_ms, self.negative,
                                  self.total_ms + other.total_ms)
        for b, c in other.counts.items():
            out.counts[b] = out.counts.get(b, 0) + c
        out.count += other.count
        out.max_ms = max(out.max_ms, other.max_ms)
        out.negative += other.negative
        return out

    def percentile(self, q: float) -> float:
        """The q-th percentile (0 < q <= 100) in ms; 0 for an empty distribution."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(_upper_ms(b), self.max_ms)
        return self.max_ms

    def count_below(self, ms: float) -> int:
        """How many values were recorded in buckets that end at or below `ms`: a Prometheus
        bucket `le`, low by at most the values within 1% under the bound."""
        return sum(c for b, c in self.counts.items() if _upper_ms(b) <= ms)

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count,
            "p50_ms": round(self.percentile(50), 3),
            "p95_ms": round(self.percentile(95), 3),
            "p99_ms": round(self.percentile(99), 3),
            "max_ms": round(self.max_ms, 3),
        }
