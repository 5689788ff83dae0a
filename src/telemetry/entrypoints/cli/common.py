"""What every `telemetry` command shares: its settings and container, and the help format."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from telemetry.adapters.private_files import open_to_others
from telemetry.entrypoints import logs
from telemetry.entrypoints.container import Container, create_container
from telemetry.entrypoints.logs import event
from telemetry.entrypoints.settings import Settings, install_hint, load_settings

log = logging.getLogger("telemetry")


class Invocation:
    """One run of a command: the settings, read once, and the container built from them.

    `telemetry` builds the container itself; a caller may hand in one it built (and overrode
    some providers of) instead, whose settings are then the command's."""

    def __init__(self, container: Container | None = None) -> None:
        self._container = container
        self._settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            s = self._container.settings() if self._container is not None else load_settings()
            logs.configure(s.log_format, s.log_level)
            if open_to_others(s.data_dir):
                event(log, "data_dir_open_to_others", logging.WARNING, data_dir=str(s.data_dir),
                      advice=f"chmod 700 {s.data_dir}: readings hold GPS positions")
            self._settings = s
        return self._settings

    def container(self) -> Container:
        if self._container is None:
            self._container = create_container(self.settings())
        else:
            self.settings()
        return self._container


def missing_extra(command: str, extra: str, error: str) -> Any:
    def run(_args: argparse.Namespace) -> int:
        print(f"telemetry {command}: needs the {extra} extra ({error}): {install_hint(extra)}",
              file=sys.stderr)
        return 2

    return run


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, except where there is none to show, the help already says it, or
    the value could be a secret (a key taken from the environment)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        d = action.default
        nothing = d is None or d is False or d in ("", argparse.SUPPRESS)
        if nothing or "default" in text or "key" in action.dest or not action.option_strings:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
