"""Settings from the environment reach the objects the container builds."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from telemetry.entrypoints.container import create_container
from telemetry.entrypoints.settings import ConfigError, Settings, load_settings


def test_the_worker_gets_its_receive_size_and_partials_interval(tmp_path: Path) -> None:
    settings = load_settings({"TELEMETRY_DATA_DIR": str(tmp_path), "TELEMETRY_QUEUE": "memory",
                              "TELEMETRY_STORAGE": "memory", "TELEMETRY_RECEIVE_MAX": "7",
                              "TELEMETRY_PARTIALS_EVERY": "2.5"})
    drain = create_container(settings).drain_batches()
    assert (drain.receive_max, drain.partials_every) == (7, 2.5)
    default = create_container(load_settings({"TELEMETRY_DATA_DIR": str(tmp_path),
                                              "TELEMETRY_QUEUE": "memory",
                                              "TELEMETRY_STORAGE": "memory"})).drain_batches()
    assert default.partials_every == 60.0


@pytest.mark.parametrize("text", ["0", "-1", "soon"])
def test_a_bad_partials_interval_names_the_variable(text: str) -> None:
    with pytest.raises(ConfigError, match="TELEMETRY_PARTIALS_EVERY"):
        load_settings({"TELEMETRY_PARTIALS_EVERY": text})


def test_curation_gets_its_format_grace_part_size_and_retention(tmp_path: Path) -> None:
    from telemetry.adapters.parquet import ParquetFormat
    from telemetry.domain.curation import JsonLinesGzip

    base = {"TELEMETRY_DATA_DIR": str(tmp_path), "TELEMETRY_QUEUE": "memory",
            "TELEMETRY_STORAGE": "memory"}
    curate = create_container(load_settings({
        **base, "TELEMETRY_CURATED_FORMAT": "Parquet", "TELEMETRY_CURATE_GRACE": "30",
        "TELEMETRY_CURATED_PART_BYTES": "1000000"})).curate_hours()
    assert isinstance(curate.fmt, ParquetFormat)
    assert (curate.grace.total_seconds(), curate.part_bytes, curate.raw_retention) == (
        30, 1_000_000, None)
    default = create_container(load_settings({**base, "TELEMETRY_RAW_RETENTION": "86400"}))
    curate = default.curate_hours()
    assert isinstance(curate.fmt, JsonLinesGzip)
    assert (curate.grace.total_seconds(), curate.raw_retention.total_seconds()) == (600, 86400)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TELEMETRY_CURATED_FORMAT": "orc"}, "TELEMETRY_CURATED_FORMAT"),
        ({"TELEMETRY_CURATE_GRACE": "-1"}, "TELEMETRY_CURATE_GRACE"),
        ({"TELEMETRY_CURATED_PART_BYTES": "0"}, "TELEMETRY_CURATED_PART_BYTES"),
        ({"TELEMETRY_RAW_RETENTION": "nan"}, "TELEMETRY_RAW_RETENTION"),
        ({"TELEMETRY_RAW_RETENTION": "60", "TELEMETRY_CURATED_FORMAT": "parquet"},
         "TELEMETRY_RAW_RETENTION"),
        ({"TELEMETRY_RAW_RETENTION": "60", "TELEMETRY_CURATE": "false"},
         "TELEMETRY_RAW_RETENTION"),
    ],
)
def test_bad_curation_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(env)


def test_a_bad_value_from_the_file_is_named_as_written_there(tmp_path: Path) -> None:
    cfg = tmp_path / "telemetry.toml"
    cfg.write_text('queue = "sqlite"\nbatch_max_age = -3\n')
    with pytest.raises(ConfigError) as info:
        load_settings({"TELEMETRY_CONFIG_FILE": str(cfg)})
    message = str(info.value)
    assert message.startswith(f"batch_max_age='-3' in {cfg}:"), message
    assert "TELEMETRY_BATCH_MAX_AGE" not in message
    # The environment wins, and is named as the variable it is.
    with pytest.raises(ConfigError, match=r"^TELEMETRY_BATCH_MAX_AGE='x':"):
        load_settings({"TELEMETRY_CONFIG_FILE": str(cfg), "TELEMETRY_BATCH_MAX_AGE": "x"})


def test_the_readme_lists_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    lines = table.splitlines()

    def listed(name: str) -> bool:
        """Named whole, or as `_SUFFIX` in a row that names a sibling (`TELEMETRY_A_X`, `_Y`)."""
        if f"`{name}`" in table:
            return True
        cuts = [i for i, c in enumerate(name) if c == "_" and i > len("TELEMETRY")]
        return any(f"`{name[:i]}" in line and f"`{name[i:]}`" in line
                   for i in cuts for line in lines)

    missing = [n for f in msgspec.structs.fields(Settings)
               if not listed(n := f"TELEMETRY_{f.name.upper()}")]
    assert not missing, f"not in the README's configuration table: {missing}"
