"""What the command line tells a new user: its version, its defaults, and what to install when
an optional extra is missing."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys

import pytest

import telemetry
import telemetry.adapters
import telemetry.entrypoints
from telemetry.entrypoints import cli


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_version_has_one_source(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"telemetry {telemetry.__version__}"
    assert importlib.metadata.version("fleet-telemetry") == telemetry.__version__


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "serve", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "address to listen on" in text and "(default: 127.0.0.1)" in text
    assert "TCP port to listen on (default: 8000)" in text
    _, out, _ = _run(capsys, "simulate", "--help")
    assert "(default: 10)" in " ".join(out.split())  # --vehicles
    assert "TELEMETRY_API_KEY" in out


def test_replay_is_listed_and_says_what_to_install_without_the_can_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(sys.modules):
        if name in ("cantools", "can") or name.startswith(("cantools.", "can.")) or name in (
                "telemetry.entrypoints.replay", "telemetry.adapters.canlog"):
            monkeypatch.delitem(sys.modules, name)
    for package, attr in ((telemetry.entrypoints, "replay"), (telemetry.adapters, "canlog")):
        monkeypatch.delattr(package, attr, raising=False)
    monkeypatch.setitem(sys.modules, "cantools", None)  # import cantools -> ImportError
    _, out, _ = _run(capsys, "--help")
    assert "replay" in out
    code, out, err = _run(capsys, "replay", "--dbc", "x.dbc", "--log", "x.log",
                          "--vehicle-id", "v1")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "pip install 'fleet-telemetry[can]'" in err
    code, _, err = _run(capsys, "demo", "--replay", "car")
    assert code == 2 and "pip install 'fleet-telemetry[can]'" in err


def test_demo_on_aws_says_what_to_install_without_moto(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "moto" else real(name, *a))
    code, _, err = _run(capsys, "demo", "--backend", "aws")
    assert code == 2
    assert "pip install 'fleet-telemetry[aws-demo]'" in err
    assert "Traceback" not in err


def test_commands_other_than_replay_start_without_the_can_stack() -> None:
    # python-can imports asammdf, numpy and pandas: well over 100 MiB in every server process.
    code = ("import sys\n"
            "from telemetry.entrypoints.cli import build_parser\n"
            "build_parser(['serve']); build_parser(['worker', '--once'])\n"
            "print(sorted(m for m in ('can', 'cantools', 'asammdf', 'pandas', 'pyarrow')"
            " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    if importlib.util.find_spec("can") is not None:
        code = code.replace("build_parser(['serve']); build_parser(['worker', '--once'])",
                            "build_parser(['replay', '--help'])")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        assert "'can'" in out  # the check above can fail
