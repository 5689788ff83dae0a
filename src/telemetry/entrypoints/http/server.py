"""What a server process does once: settings, logs, the apps, the collector's tuning."""

from __future__ import annotations

import gc

from litestar import Litestar

from telemetry.entrypoints import logs, slow_clients
from telemetry.entrypoints.container import Container, create_container
from telemetry.entrypoints.http.app import create_apps
from telemetry.entrypoints.settings import load_settings

# Allocations (net of frees) of container objects between two young collections; see tune_gc.
GC_GEN0_THRESHOLD = 20_000


def app_from_env() -> Litestar:
    """Factory for `uvicorn --factory`: each server process builds its own container."""
    return app_for(create_container(load_settings()))


def app_for(container: Container) -> Litestar:
    """The public app of this server process, its operations listener started with it."""
    settings = container.settings()
    logs.configure(settings.log_format, settings.log_level)
    slow_clients.configure(settings.header_timeout)
    apps = create_apps(container, serve_ops=True)
    tune_gc()
    return apps.public


def tune_gc() -> None:
    """Fewer, cheaper collections in a server process.

    A decoded request holds a few thousand container objects at once (a dict and a struct per
    reading), so the default gen0 threshold (700) collected every few requests, each time
    promoting the request's live objects to be scanned again by gen1 and gen2 collections
    that also walked every object of the framework. Freezing what start-up built takes it out
    of every later collection; the higher threshold lets a request's objects die by reference
    count before a collection sees them. Cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
