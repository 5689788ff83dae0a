"""A mergeable latency distribution with p50/p95/p99/max.

Log-spaced buckets 1% wide (like HDR histograms): a percentile is reported as its bucket's upper
edge, so it is at most 1% above the true value; max is exact. Merging adds bucket counts, so
partial distributions from many files or workers combine in any order to the same result.
"""

from __future__ import annotations

import math
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

    def add(self, ms: float, weight: int = 1) -> None:
        if weight <= 0:
            return
        if ms < 0:
            self.negative += weight
            ms = 0.0
        b = _bucket(ms)
        self.counts[b] = self.counts.get(b, 0) + weight
        self.count += weight
        if ms > self.max_ms:
            self.max_ms = ms

    def add_many(self, values_ms: Iterable[float]) -> None:
        counts = self.counts
        for ms in values_ms:
            if ms < 0:
                self.negative += 1
                ms = 0.0
            b = _bucket(ms)
            counts[b] = counts.get(b, 0) + 1
            self.count += 1
            if ms > self.max_ms:
                self.max_ms = ms

    def merge(self, other: LatencyDistribution) -> LatencyDistribution:
        out = LatencyDistribution(dict(self.counts), self.count, self.max_ms, self.negative)
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

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count,
            "p50_ms": round(self.percentile(50), 3),
            "p95_ms": round(self.percentile(95), 3),
            "p99_ms": round(self.percentile(99), 3),
            "max_ms": round(self.max_ms, 3),
        }
