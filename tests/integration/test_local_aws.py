"""The demo's local moto server: its log is the user's alone, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from telemetry.entrypoints.local_aws import MotoServer


def test_the_moto_servers_log_is_private_under_umask_0(tmp_path: Path) -> None:
    pytest.importorskip("moto.server", reason="the aws-demo extra is not installed")
    log = tmp_path / "moto.log"
    old = os.umask(0)
    try:
        with MotoServer(log):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
