"""A raw file that is not lines of records stops `telemetry aggregate` with a message naming it,
not a traceback; the hours before it are written and recorded."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from telemetry.adapters.filesystem import FilesystemStorage
from telemetry.domain import lake
from telemetry.domain.readings import Record, encode_record
from telemetry.entrypoints import cli
from tests.strategies import HOUR

GOOD = encode_record(Record("a", "v1", HOUR, HOUR + timedelta(seconds=1), {"speed": 1.0}))
LATER = HOUR + timedelta(hours=1)

BAD_FILES = {
    "not json": b"this is not json\n",
    "a field of the wrong type": b'{"reading_id": 1}\n',
    # A time without a zone beside one with a zone: they cannot be ordered (this raised a
    # TypeError from the dedupe before the decode refused it).
    "a time without a zone": GOOD.replace(b'"reading_id":"a"', b'"reading_id":"b"') + b"\n"
    + GOOD.replace(b'"reading_id":"a"', b'"reading_id":"b"').replace(b"Z", b"") + b"\n",
}


@pytest.mark.parametrize("what", sorted(BAD_FILES))
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_bad_raw_file_is_named_and_the_hours_before_it_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    what: str, jobs: str,
) -> None:
    monkeypatch.setenv("TELEMETRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TELEMETRY_CURATE", "false")
    storage = FilesystemStorage(tmp_path / "lake")
    storage.put(lake.raw_key(HOUR, "good", False), GOOD + b"\n")
    bad = lake.raw_key(LATER, "bad", False)
    storage.put(lake.raw_key(LATER, "fine", False),
                encode_record(Record("c", "v1", LATER, LATER, {"speed": 2.0})) + b"\n")
    storage.put(bad, BAD_FILES[what])
    assert cli.main(["aggregate", "--jobs", jobs]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: not a raw lake file" in err
    assert "Traceback" not in err
    assert storage.get(lake.aggregate_key(HOUR))  # the good hour was written
    # The file moved aside, the next run goes on from there.
    storage.delete(bad)
    assert cli.main(["aggregate", "--jobs", jobs]) == 0
    assert storage.get(lake.aggregate_key(LATER))
