"""Settings from the environment reach the objects the container builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from telemetry.entrypoints.container import create_container
from telemetry.entrypoints.settings import ConfigError, load_settings


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
