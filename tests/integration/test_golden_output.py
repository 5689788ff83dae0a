"""What `telemetry aggregate` writes (aggregates and curated hours) is byte for byte what it
wrote before any speed work: digests taken once on a fixed lake (tests/support/golden_lake.py)
and kept here. A change that moves a byte of the output fails this test; one that means to must
say so and take the digests again (`python -m tests.integration.test_golden_output`)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

from telemetry.domain import aggregation
from telemetry.entrypoints import cli
from tests.support import golden_lake

# After stage 0 (the first run), stage 1 (late data; raw files of curated hours retired) and
# stage 2 (late data for an hour whose raw files are gone: read back from its curated parts).
GOLDEN = (
    "eb591077e321c04467e793a294a32ba89fc09b19c05c385dd63bef0e0edc6f3e",
    "06d2caa46ae3ca04e70094646ebb2986fdb5ebe0cbba7a2232f23c7bae8519b9",
    "d67b1e1ab0d431ed2cb79d5c81a59e1f354e67598ee8dea0b1fbefe034481223",
)


def _stages(data: Path, jobs: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("TELEMETRY_DATA_DIR", str(data))
    monkeypatch.setenv("TELEMETRY_CURATED_PART_BYTES", "20000")  # several parts an hour
    root = data / "lake"
    digests = []
    for stage in range(3):
        golden_lake.build(root, stage)
        if stage == 1:
            monkeypatch.setenv("TELEMETRY_RAW_RETENTION", "1")
        assert cli.main(["aggregate", "--jobs", str(jobs)]) == 0
        digests.append(golden_lake.digest(root))
    return digests


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["compiled", "python"])
@pytest.mark.parametrize("jobs", [1, 2, 4])
def test_output_is_byte_for_byte_the_golden_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int, kernel: str
) -> None:
    # jobs 2: hours in parallel processes; jobs 4: each hour's files split over processes
    # (or, with the compiled kernel, each hour it settles in one). "python": the Python paths
    # alone, as where the kernel is not built; processes are forked, so they inherit it.
    if kernel == "python":
        monkeypatch.setattr(aggregation, "hour_kernel", None)
    elif aggregation.hour_kernel is None:
        if os.environ.get("TELEMETRY_REQUIRE_NATIVE"):
            pytest.fail("telemetry._hourscan is not built")
        pytest.skip("telemetry._hourscan is not built (no C compiler at install time)")
    assert _stages(tmp_path, jobs, monkeypatch) == list(GOLDEN)


if __name__ == "__main__":  # prints the digests of the code as it is
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        print(_stages(Path(d), 1, mp), file=sys.stderr)
